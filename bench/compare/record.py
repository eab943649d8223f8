"""compare.json: the record of a compare, raw pairs and never statistics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.compare.policy import DEFAULT_THRESHOLD, TRIAL_ORDER_SEED, TrialPolicy, check_start
from bench.core.records import CaseResult, CaseSpec, Environment, decode_record
from bench.core.telemetry import GpuReading
from bench.gate import rules as gate
from bench.gate.stats import log_ratios
from cosmos3 import strict_json
from cosmos3.errors import InputError

COMPARE_RECORD = "compare.json"
SCHEMA_VERSION = 2  # 2: process pairs (CompareRecord.processes, PairedCase.process)


# A paired case's verdict is bench.gate.stats's (REGRESSION, NOT_SIGNIFICANT, OK, FASTER); those of cases not paired:
NEW = "new"  # in the head's grid only
REMOVED = "removed"  # in the base's grid only
NOT_COMPARABLE = "not comparable"  # the base cannot build or run it (its cosmos3 lacks something)
FAILED = gate.FAILED  # the head cannot build or run it: fails the compare


@dataclass(frozen=True)
class Criteria:
    """What the verdict tolerates (a subset of bench.gate.rules.GateConfig, as a record)."""

    threshold: float = DEFAULT_THRESHOLD
    overrides: dict[str, float] = field(default_factory=dict)  # case name or pattern -> threshold
    alpha: float = gate.DEFAULT_ALPHA
    memory_threshold: float = gate.DEFAULT_MEMORY_THRESHOLD

    def gate_config(self) -> gate.GateConfig:
        return gate.GateConfig(latency_threshold=self.threshold, latency_overrides=self.overrides, alpha=self.alpha,
                               memory_threshold=self.memory_threshold)

    def __post_init__(self) -> None:
        self.gate_config()  # the gate's checks on every value


@dataclass(frozen=True)
class Side:
    """One side of the comparison: which code it ran and where."""

    side: str  # "base" | "head"
    ref: str  # the ref as given, or "working tree"
    commit: str
    dirty: bool  # the head's tracked files differ from its commit; a base worktree never does
    cosmos3_file: str  # as the worker imported it, symlinks resolved
    environment: Environment

    @property
    def label(self) -> str:
        return f"{self.ref} ({self.commit[:12]}{', dirty' if self.dirty else ''})"


@dataclass(frozen=True)
class PairedCase:
    """A case measured on both sides: trial i is head.samples_ms[i] against base.samples_ms[i], measured by
    process pair process[i] (head worker i and base worker i; empty: every trial by pair 0)."""

    head: CaseResult
    base: CaseResult
    head_first: tuple[bool, ...]  # per trial, whether the head's round ran first
    stopped: str  # stop_reason's answer
    process: tuple[int, ...] = ()  # per trial, the index of the process pair that ran it
    # Every NVML reading of each side's workers (before and after their timed rounds); empty without NVML.
    head_gpu: tuple[GpuReading, ...] = ()
    base_gpu: tuple[GpuReading, ...] = ()

    def __post_init__(self) -> None:
        if self.head.spec != self.base.spec:
            raise InputError("base.spec", f"must equal the head's ({self.head.name})", self.base.name)
        if not len(self.head.samples_ms) == len(self.base.samples_ms) == len(self.head_first):
            raise InputError(f"{self.head.name}.samples_ms", "must hold one sample per trial on each side",
                             (len(self.head.samples_ms), len(self.base.samples_ms), len(self.head_first)))
        if self.process and (len(self.process) != len(self.head_first) or min(self.process) < 0):
            raise InputError(f"{self.head.name}.process", "must hold one process index >= 0 per trial",
                             len(self.process))

    @property
    def trial_process(self) -> np.ndarray:
        return np.asarray(self.process, dtype=int) if self.process else np.zeros(len(self.head_first), dtype=int)

    def process_medians(self) -> np.ndarray:
        """The median log ratio of each process pair that ran trials, in pair order."""
        d, proc = self.log_ratios, self.trial_process
        return np.array([float(np.median(d[proc == j])) for j in np.unique(proc)])

    def within_process_spread(self) -> float:
        """The pooled standard deviation of the log ratios about their own pair's median."""
        d, proc = self.log_ratios, self.trial_process
        resid = np.concatenate([d[proc == j] - np.median(d[proc == j]) for j in np.unique(proc)])
        return float(np.sqrt(np.mean(resid ** 2)))

    def process_spread(self) -> float | None:
        """The standard deviation of the per-pair median log ratios; None with fewer than two pairs."""
        m = self.process_medians()
        return float(np.std(m, ddof=1)) if len(m) >= 2 else None

    @property
    def name(self) -> str:
        return self.head.name

    @property
    def log_ratios(self) -> np.ndarray:
        return log_ratios(self.head.samples_ms, self.base.samples_ms)


@dataclass(frozen=True)
class Unpaired:
    """A case not compared: on one side only, or not runnable on one side."""

    spec: CaseSpec
    status: str  # NEW | REMOVED | NOT_COMPARABLE | FAILED
    reason: str = ""

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class CompareRecord:
    base: Side
    head: Side
    criteria: Criteria
    policy: TrialPolicy
    pairs: tuple[PairedCase, ...]
    unpaired: tuple[Unpaired, ...] = ()
    keyword: str | None = None
    seed: int = TRIAL_ORDER_SEED
    argv: str = ""
    wall_s: float | None = None
    processes: int = 1  # worker process pairs (one head and one base worker each)
    startup_s: float | None = None  # from the first worker started to the last one Ready
    worker_start: str | None = None  # WORKER_STARTS; None in records made before there was a choice
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise InputError("schema_version", f"must be {SCHEMA_VERSION}", self.schema_version)
        if self.worker_start is not None:
            check_start(self.worker_start)


def load_compare(path: Path | str) -> CompareRecord:
    """Read compare.json back (every field typed and checked, as run records are)."""
    path = Path(path)
    try:
        data = strict_json.loads(path.read_text(), f"compare record {path}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError("compare record", f"must be readable JSON ({exc})", str(path)) from None
    return decode_record(CompareRecord, data, f"compare record {path}")
