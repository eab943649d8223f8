"""`python -m bench compare --base REF`: base and head measured in one job, interleaved, and judged on paired ratios.

Two processes on one device run the head's benchmark code (bench.worker); the base's imports
its cosmos3 from a temporary `git worktree` of REF, the head's from the working tree. Per case
both warm up, then each trial runs one synchronised round on each side in a seeded random order,
one side at a time, so slow drifts of the machine (clocks, host load) hit both sides of a pair
alike. The per-trial log ratio head/base carries the verdict:

- estimate: the median ratio, exp(median log ratio), with a CI_LEVEL (bench.stats) bootstrap interval;
- test: one-sided Wilcoxon signed-rank on the log ratios (is the head slower?), Holm-adjusted
  across the run's cases, so that a whole compare raises a false alarm with probability <= alpha;
- regression: median ratio > 1 + threshold and adjusted p < alpha.

Holm bounds the false alarms that trial-to-trial noise can cause. An offset that lasts as long as
a worker process (core placement, thread pool, allocator, address layout) is not trial-to-trial
noise: with one process per side it is the same in every trial, and the Wilcoxon test alone counts
it as a difference. So each side runs in `processes` (k) worker processes, started together as k
(head, base) process pairs; the trials of a case go to the pairs in shuffled blocks (each block
one trial per pair, in a seeded random order), and every trial records its pair (`process`). The
process pair is then a unit of variation: with k >= 2 a regression also needs a one-sided
one-sample t-test across the k per-pair median log ratios (Holm-adjusted across cases as well)
to reject at alpha. Each of the two tests alone keeps its false alarms <= alpha; requiring both
(an intersection-union test) keeps them <= alpha too, and the across-process test holds whatever
the size of the process bias, since the k pairs are independent fresh processes. With k = 1 the
process bias is neither randomized nor measured, and the verdict says so.

Trials stop (see `stop_reason`) once the interval lies below the limit, or is narrower than the
threshold, or the case's round-time budget is spent; never before the minimum that lets the test
reach significance. Device time, work counters and memory (the gate rules in PAIR_RULE_NAMES) are
judged as against a stored baseline. Statistics are derived from the raw pairs in compare.json, never stored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from bench import cases as cases_mod
from bench import gate, stats, telemetry
from bench.controls import RoundPolicy, RunControls
from bench.forkserver import ForkedProcess
from bench.interrupt import Interrupted, deferred_signals, stopped_by_signals, write_interrupted
from bench.protocol import (
    REPLIES,
    Bye,
    Finish,
    Finished,
    Prepare,
    Prepared,
    Quit,
    Ready,
    Round,
    RoundDone,
    Start,
    Unavailable,
    decode_message,
    encode_message,
)
from bench.records import CaseResult, CaseSpec, Environment, RunRecord, decode_record
from bench.stats import REGRESSION, log_ratios, median_ci, min_trials_for
from bench.telemetry import GpuReading
from bench.worktree import base_worktree, check_package, head_state, resolve_ref
from cosmos3 import strict_json
from cosmos3.errors import InputError

DEFAULT_THRESHOLD = 0.02  # a paired median ratio above 1.02 is a regression (when significant)
# Trials per case. At least MIN_TRIALS, and at least enough for the Holm-adjusted Wilcoxon test to
# be able to reach alpha (see bench.stats.min_trials_for); at most MAX_TRIALS.
MIN_TRIALS = 10
MAX_TRIALS = 400
# Beyond the minimum, a case's trials stop when the sum of both sides' round times reaches its
# budget: a few seconds on a GPU (about 90 trials of a 22 ms stage), more on the CPU's noisier rounds.
CASE_BUDGET_S = {"cuda": 4.0, "cpu": 6.0}
# The stopping rule's bootstrap runs at n_min and then each time n has grown by this factor, so its
# cost (tens of ms on a loaded host) stays small beside the rounds it judges.
CHECK_GROWTH = 1.2
TRIAL_ORDER_SEED = 0
# Protocol waits: building wan22 models (first CUDA context included) can take minutes.
START_TIMEOUT_S = 900.0
REPLY_TIMEOUT_S = 900.0
QUIT_TIMEOUT_S = 30.0
STDERR_TAIL_LINES = 25
COMPARE_RECORD = "compare.json"
SCHEMA_VERSION = 2  # 2: process pairs (CompareRecord.processes, PairedCase.process)
# Worker process pairs per compare (see the module docstring); at least MIN_TRIALS_PER_PROCESS trials each.
# With a fixed round-time budget the across-pair t statistic does not grow with k; only its degrees of
# freedom do, and with them the critical value falls: one-sided at Holm's 0.01/3, t > 7.45 with 4 pairs
# (3 dof), t > 3.9 with 8 (7 dof). GPU-bound cases vary little from trial to trial, so 4 pairs do there
# (each worker also holds the models and its allocator's peak on the one GPU); CPU rounds vary by 20% and
# more on a loaded 2-core host, where 8 pairs (16 workers) and a longer budget catch a +10% change.
DEFAULT_PROCESSES_BY_DEVICE = {"cuda": 4, "cpu": 8}
DEFAULT_PROCESSES = DEFAULT_PROCESSES_BY_DEVICE["cuda"]
# How workers start: "exec", each a fresh `python -m bench.worker`; "fork", each forked from one server that
# has imported torch, diffusers and transformers (bench.forkserver): about 6 s of CPU less per worker.
# Fork only where no GPU is used: CUDA cannot be used in a process forked after it was initialised.
WORKER_STARTS = ("exec", "fork")
DEFAULT_START_BY_DEVICE = {"cuda": "exec", "cpu": "fork"}


def default_processes(device_kind: str) -> int:
    """The worker pairs a compare runs on `device_kind` ("cuda" or "cpu") unless told otherwise."""
    return DEFAULT_PROCESSES_BY_DEVICE.get(device_kind, DEFAULT_PROCESSES)


MIN_TRIALS_PER_PROCESS = 3
MAX_PROCESSES = 32


def default_start(device_kind: str) -> str:
    return DEFAULT_START_BY_DEVICE.get(device_kind, "exec")


def check_start(start: object) -> None:
    if start not in WORKER_STARTS:
        raise InputError("worker_start", f"must be one of {', '.join(WORKER_STARTS)}", start)


def check_processes(k: object) -> None:
    """1 (no process test) or 3 to MAX_PROCESSES pairs. Two pairs leave the across-pair t-test one degree
    of freedom: a one-sided p < 0.01 then needs t > 31.8, an effect 22 times the pair spread, so a 4x
    slowdown with an 8% pair spread would pass as "not significant"."""
    if isinstance(k, bool) or not isinstance(k, int) or not (k == 1 or 3 <= k <= MAX_PROCESSES):
        raise InputError("processes", f"must be 1, or 3 to {MAX_PROCESSES} worker pairs (with 2 the across-pair "
                         "t-test has one degree of freedom and cannot tell a large slowdown from process noise)", k)

# A paired case's verdict is bench.stats's (REGRESSION, NOT_SIGNIFICANT, OK, FASTER); those of cases not paired:
NEW = "new"  # in the head's grid only
REMOVED = "removed"  # in the base's grid only
NOT_COMPARABLE = "not comparable"  # the base cannot build or run it (its cosmos3 lacks something)
FAILED = gate.FAILED  # the head cannot build or run it: fails the compare

# The rules of the stored-baseline gate that compare applies to the head's records against the base's, by
# name: an allow-list. A rule added to bench.gate.RULES is applied here only once it is named here; until it
# is named here or in NOT_PAIR_RULES, with the reason, tests/test_compare.py fails.
PAIR_RULE_NAMES = frozenset({"device_time", "counters", "memory"})
# The gate's other rules, each with why compare does not apply it.
NOT_PAIR_RULES = {
    "latency": "replaced by the paired test",
    "coverage": "replaced by the new and removed cases",
    "errors": "replaced by the failed cases",
    "speedup": "an in-run check of `bench run`, not base against head",
    "equivalence": "an in-run check of `bench run`, not base against head",
    "stage_consistency": "an in-run check of `bench run`, not base against head",
}
PAIR_RULES: tuple[gate.Rule, ...] = tuple(rule for rule in gate.RULES if rule.name in PAIR_RULE_NAMES)


class WorkerError(InputError):
    """A worker died, hung or broke the protocol; the message ends with its stderr."""


@dataclass(frozen=True)
class TrialPolicy:
    """How long each case is measured; `--rounds WARMUP,MIN,MAX,TARGET_MS` sets all four."""

    warmup_rounds: int | None = None  # per side; None: each kind's own (bench.workloads)
    min_trials: int = MIN_TRIALS
    max_trials: int = MAX_TRIALS
    budget_s: float = CASE_BUDGET_S["cuda"]  # both sides' round times, summed, per case

    def __post_init__(self) -> None:
        if not 2 <= self.min_trials <= self.max_trials:
            raise InputError("rounds", "needs 2 <= MIN <= MAX trials", self)
        if not (math.isfinite(self.budget_s) and self.budget_s > 0):
            raise InputError("rounds", "needs a finite budget > 0", self)

    def at_least(self, n_min: int) -> TrialPolicy:
        """This policy with at least `n_min` trials (see min_trials_for)."""
        return dataclasses.replace(self, min_trials=max(self.min_trials, n_min),
                                   max_trials=max(self.max_trials, n_min))

    @classmethod
    def for_device(cls, device_kind: str, rounds: RoundPolicy | None) -> TrialPolicy:
        if rounds is not None:
            return cls(rounds.warmup_rounds, rounds.min_rounds, rounds.max_rounds, rounds.target_ms / 1e3)
        return cls(budget_s=CASE_BUDGET_S.get(device_kind, CASE_BUDGET_S["cuda"]))


def stop_reason(d: np.ndarray, threshold: float, *, n_min: int, max_trials: int, spent_s: float, budget_s: float,
                check: bool, seed: int = 0) -> str | None:
    """Why a case's trials stop now, or None to go on. With L = log(1 + threshold) and [lo, hi] the
    CI_LEVEL bootstrap interval of the median log ratio, after at least n_min pairs:

    - "within"      hi < L: the head is not slower than allowed (the interval lies below the limit);
    - "resolved"    (hi - lo) / 2 < L / 2: the interval is narrower than the threshold, so the estimate
                    is as sharp as a decision at the threshold needs;
    - "budget"      both sides' rounds of this case have taken budget_s;
    - "max trials"  n = max_trials.

    An interval above the limit is deliberately not a reason: stopping on data that look slow is
    optional stopping and would raise the test's false-alarm rate above alpha; stopping on data that
    look fine (or on precision alone) does not. A real regression so gets its full budget of trials.
    The interval is recomputed only when `check` is set (see CHECK_GROWTH); budget and count every time.
    """
    n = len(d)
    if n >= max_trials:
        return "max trials"
    if n < n_min:
        return None
    if check:
        limit = math.log1p(threshold)
        lo, hi = median_ci(d, seed=seed)
        if hi < limit:
            return "within"
        if (hi - lo) / 2 < limit / 2:
            return "resolved"
    if spent_s >= budget_s:
        return "budget"
    return None


# ---- the record of a compare: raw pairs, never statistics ------------------------------------


@dataclass(frozen=True)
class Criteria:
    """What the verdict tolerates (a subset of bench.gate.GateConfig, as a record)."""

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


# ---- the verdict ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedComparison:
    name: str
    trials: int
    base_median_ms: float
    head_median_ms: float
    ratio: float  # exp(median log ratio): the typical head/base ratio of one trial
    ci_low: float
    ci_high: float
    p_slower: float  # one-sided Wilcoxon, before Holm
    p_adjusted: float  # Holm-adjusted across the run's paired cases
    threshold: float
    verdict: str
    stopped: str
    note: str = ""
    processes: int = 1  # process pairs that ran trials
    p_process: float | None = None  # one-sided t-test across the per-pair median log ratios; None with k < 2
    p_process_adjusted: float | None = None  # Holm-adjusted across the run's paired cases
    process_spread: float | None = None  # SD of the per-pair median log ratios
    within_spread: float = 0.0  # pooled SD of the log ratios about their pair's median
    gpu_note: str | None = None  # bench.telemetry.sm_clock_note: the GPU's clocks or throttling may explain it

    @property
    def failure(self) -> str | None:
        return f"{self.name}: {self.note}" if self.verdict == REGRESSION else None


@dataclass(frozen=True)
class CompareReport:
    record: CompareRecord
    comparisons: tuple[PairedComparison, ...]
    findings: tuple[gate.Finding, ...]  # PAIR_RULES on the head's records against the base's
    notes: tuple[str, ...]

    @property
    def failures(self) -> tuple[str, ...]:
        out = [c.failure for c in self.comparisons if c.failure]
        out += [f"{u.name}: failed on the head: {first_line(u.reason)}" for u in self.record.unpaired
                if u.status == FAILED]
        out += [f.failure for f in self.findings if f.failure]
        return tuple(out)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def judge(record: CompareRecord) -> CompareReport:
    """Every paired case's verdict (Holm across them) and the pair rules; pure, from the record alone.

    A regression needs size (median ratio > 1 + threshold), the within-process Wilcoxon test and, where
    the case ran in two or more process pairs, the across-process t-test: both Holm-adjusted p < alpha."""
    criteria = record.criteria
    config = criteria.gate_config()
    raw = []
    for pair in record.pairs:
        d = pair.log_ratios
        lo, hi = median_ci(d, seed=record.seed)
        medians = pair.process_medians()
        raw.append((pair, d, lo, hi, stats.wilcoxon_p(d, "greater"), stats.wilcoxon_p(d, "less"),
                    stats.process_t_p(medians, "greater"), stats.process_t_p(medians, "less")))
    slower_adj = stats.holm([r[4] for r in raw])
    faster_adj = stats.holm([r[5] for r in raw])
    proc_slower_adj = stats.holm_optional([r[6] for r in raw])
    proc_faster_adj = stats.holm_optional([r[7] for r in raw])
    comparisons = []
    for (pair, d, lo, hi, p_slower, _, p_proc, _), p_adj, p_faster_adj, pp_adj, pf_adj in zip(
            raw, slower_adj, faster_adj, proc_slower_adj, proc_faster_adj, strict=True):
        threshold = config.threshold_for(pair.name)
        ratio = math.exp(float(np.median(d)))
        k = len(pair.process_medians())
        spread = pair.process_spread()
        change = (f"median paired ratio {ratio:.3f} [{math.exp(lo):.3f}, {math.exp(hi):.3f}] over {len(d)} trials "
                  f"in {k} process pair{'s' if k != 1 else ''} "
                  f"(head {pair.head.median_ms:.2f} ms, base {pair.base.median_ms:.2f} ms)")
        verdict, why = stats.verdict(ratio, threshold, criteria.alpha, p_adj, p_faster_adj, pp_adj, pf_adj)
        if why == stats.PROCESS_NOISE:
            note = (f"{change} with Holm-adjusted p={p_adj:.2g}, but across the process pairs "
                    f"(spread {spread:.1%}) Holm-adjusted p={pp_adj:.2g} >= {criteria.alpha:g}: "
                    "a process-level difference, not one of the code")
        elif why == stats.SLOWER:
            across = ("" if pp_adj is None else
                      f" and across {k} process pairs p={pp_adj:.2g}")
            alone = "" if pp_adj is not None else " (one process pair: process bias not measured)"
            note = (f"{change} > +{threshold:.1%} with Holm-adjusted p={p_adj:.2g}{across} < "
                    f"{criteria.alpha:g}: the head is slower{alone}")
        elif why == stats.NOISE:
            note = f"{change} but Holm-adjusted p={p_adj:.2g} >= {criteria.alpha:g}"
        elif why == stats.SIGNIFICANT:
            note = f"{change}: significant but within +{threshold:.1%}"
        else:
            note = ""
        gpu_note = telemetry.sm_clock_note(list(pair.head_gpu), list(pair.base_gpu))
        if gpu_note and verdict == REGRESSION:
            # Still a regression (exit 1): the timing stands, but the GPU may explain it; rerun to tell.
            note += f"; but the GPU may explain it: {gpu_note}"
        comparisons.append(PairedComparison(
            pair.name, len(d), pair.base.median_ms, pair.head.median_ms, ratio, math.exp(lo), math.exp(hi),
            p_slower, p_adj, threshold, verdict, pair.stopped, note, k, p_proc, pp_adj, spread,
            pair.within_process_spread(), gpu_note))
    findings: tuple[gate.Finding, ...] = ()
    if record.pairs:
        head_run = RunRecord(record.head.environment, tuple(p.head for p in record.pairs))
        base_run = RunRecord(record.base.environment, tuple(p.base for p in record.pairs))
        findings = gate.evaluate(head_run, base_run, config, rules=PAIR_RULES).findings
    notes = [f"{c.name}: {c.note}" for c in comparisons if c.note and not c.failure]
    notes += [f"{u.name}: {u.status}: {first_line(u.reason)}" for u in record.unpaired if u.status != FAILED]
    if not record.pairs:
        notes.append("no case ran on both sides: nothing was compared")
    return CompareReport(record, tuple(comparisons), findings, tuple(notes))


# ---- the workers ---------------------------------------------------------------------------------


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class WorkerProcess:
    """A worker and its pipes: one request, one reply, with a deadline; its stderr goes to a log file.

    `proc` is a subprocess.Popen of `python -m bench.worker` (exec) or a bench.forkserver.ForkedProcess
    (fork): the part of Popen used here is all the two share.
    """

    def __init__(self, side: str, label: str, log: Path, start: Callable[[IO[bytes]], Any]) -> None:
        self.side = side
        self.label = label  # "base HEAD~1 (0123abcd)" / "head (working tree)": names the side in errors
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 -- the worker writes it for its whole life
        self.proc = start(self._log)
        self._buffer = b""
        self._pending = "nothing"  # the request being answered, to name it when the worker dies

    @classmethod
    def exec(cls, side: str, label: str, cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> WorkerProcess:
        """A fresh interpreter running `cmd`. Its own session: a Ctrl-C at the terminal reaches only the
        coordinator, which stops the workers in order; a killed coordinator still takes them down
        (die_with_parent)."""
        return cls(side, label, log, lambda stderr: subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=cwd, env=env,
            start_new_session=True))

    @classmethod
    def fork(cls, side: str, label: str, env: dict[str, str], shim: Path, head_root: Path, log: Path
             ) -> WorkerProcess:
        """bench.worker forked from the preloaded server (bench.forkserver), in its own session as well."""
        return cls(side, label, log, lambda _stderr: ForkedProcess(env, shim, head_root, log))

    def request(self, message: Any, expected: tuple[type, ...], timeout_s: float = REPLY_TIMEOUT_S) -> Any:
        self.send(message)
        return self.receive(expected, timeout_s)

    def send(self, message: Any) -> None:
        self._pending = type(message).__name__
        try:
            self.proc.stdin.write(encode_message(message).encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the pipe was closed
            raise self.died(f"died before answering {self._pending}") from None

    def receive(self, expected: tuple[type, ...], timeout_s: float) -> Any:
        reply = decode_message(self._readline(timeout_s).decode(errors="replace"), REPLIES,
                               source=f"{self.label} worker")
        if not isinstance(reply, expected):
            raise self.died(f"sent {type(reply).__name__} where {'/'.join(c.__name__ for c in expected)} was due",
                            stop=True)
        return reply

    def _readline(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.died(f"sent no reply to {self._pending} within {timeout_s:.0f} s", stop=True)
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise self.died(f"died before answering {self._pending}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def died(self, what: str, *, stop: bool = False) -> WorkerError:
        """The error for a worker that failed: how it ended and the end of its stderr."""
        if stop:
            self.stop()
        try:
            self.proc.wait(timeout=QUIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
        return WorkerError(self.label, f"worker {what} and {describe_exit(self.proc.returncode)}; "
                                       f"the end of its stderr:\n{self.stderr_tail()}")

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        # The worker writes the file itself; the coordinator's handle is closed once the worker is stopped
        # (a hang or a protocol error stops it before this reads the tail).
        text = self.log_path.read_text(errors="replace").rstrip().splitlines()
        return "\n".join(f"  | {line}" for line in text[-lines:]) or "  | (empty)"

    def quit(self) -> None:
        self.request(Quit(), (Bye,), QUIT_TIMEOUT_S)
        self.proc.stdin.close()
        self.proc.wait(timeout=QUIT_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=QUIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(BrokenPipeError):  # the worker is gone; nothing to flush to
                    pipe.close()
        if not self._log.closed:
            self._log.close()


@dataclass(frozen=True)
class CompareSettings:
    """A compare's every input, checked by the command line before anything is created."""

    base_ref: str
    repo: Path  # the head: its working tree, and the repository the base ref is looked up in
    preset_name: str  # tiny | wan22
    controls: RunControls  # the head's negative controls (and --rounds)
    criteria: Criteria
    results_dir: Path
    run_id: str
    keyword: str | None = None
    dit_layers: int | None = None
    weights_dir: Path | None = None
    argv: str = ""
    processes: int = DEFAULT_PROCESSES  # worker process pairs
    worker_start: str = "exec"  # WORKER_STARTS

    def __post_init__(self) -> None:
        check_processes(self.processes)
        check_start(self.worker_start)


def _side_env(shim: Path, head_root: Path) -> dict[str, str]:
    """The worker's environment: `cosmos3` from the shim (first), `bench` from the head."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), str(head_root), os.environ.get("PYTHONPATH")]))
    env.pop("COSMOS3_BENCH_CONTROLS", None)  # the controls travel in Start, to the head only
    return env


@contextlib.contextmanager
def started_workers(settings: CompareSettings, trees: dict[str, Path], labels: dict[str, str], scratch: Path,
                    processes: int = 1, seed: int = TRIAL_ORDER_SEED
                    ) -> Iterator[list[dict[str, tuple[WorkerProcess, Ready]]]]:
    """`processes` pairs of workers (head and base) started together, in a seeded random order (their
    models build in parallel), and Ready; stopped however the block ends."""
    workers: dict[tuple[int, str], WorkerProcess] = {}
    slots = [(j, side) for j in range(processes) for side in trees]
    order = [slots[i] for i in np.random.default_rng(seed).permutation(len(slots))]
    try:
        for side, tree in trees.items():
            shim = scratch / f"path-{side}"
            shim.mkdir()
            (shim / "cosmos3").symlink_to(tree / "cosmos3", target_is_directory=True)
        for j, side in order:
            shim = scratch / f"path-{side}"
            name = side if processes == 1 else f"{side}-{j}"
            label = labels[side] if processes == 1 else f"{labels[side]} #{j}"
            env, log = _side_env(shim, settings.repo), scratch / f"worker-{name}.log"
            if settings.worker_start == "fork":
                workers[j, side] = WorkerProcess.fork(side, label, env, shim, settings.repo, log)
            else:  # cwd = the shim, so that `python -m` puts no checkout's cosmos3 before it on sys.path.
                workers[j, side] = WorkerProcess.exec(side, label, [sys.executable, "-m", "bench.worker"], env, shim,
                                                      log)
        for (_, side), worker in workers.items():
            worker.send(Start(
                side=side, tree=str(trees[side]), preset=settings.preset_name, dit_layers=settings.dit_layers,
                weights_dir=str(settings.weights_dir) if settings.weights_dir else None,
                controls=dataclasses.replace(settings.controls, parent_pid=None) if side == "head" else RunControls(),
            ))
        ready = {key: worker.receive((Ready,), START_TIMEOUT_S) for key, worker in workers.items()}
        yield [{side: (workers[j, side], ready[j, side]) for side in trees} for j in range(processes)]
        for worker in workers.values():
            worker.quit()
    finally:
        with deferred_signals() as pending:
            for worker in workers.values():
                worker.stop()
        if pending:
            raise Interrupted(pending[0])


def _check_ready(ready: dict[str, tuple[WorkerProcess, Ready]], trees: dict[str, Path], head_root: Path) -> None:
    for side, (worker, r) in ready.items():
        if not Path(r.cosmos3_file).is_relative_to(os.path.realpath(trees[side])):
            raise WorkerError(worker.label, f"imported cosmos3 from {r.cosmos3_file}, not from {trees[side]}")
        if not Path(r.bench_file).is_relative_to(os.path.realpath(head_root)):
            raise WorkerError(worker.label, f"imported bench from {r.bench_file}, not the head's ({head_root})")
    base, head = ready["base"][1].environment, ready["head"][1].environment
    if base.device_slug != head.device_slug:
        raise InputError("workers", f"must share one device (base on {base.device_name}, head on {head.device_name})")


def measure_case(spec: CaseSpec, workers: dict[str, WorkerProcess] | Sequence[dict[str, WorkerProcess]],
                 policy: TrialPolicy, *, threshold: float, rng: np.random.Generator, seed: int
                 ) -> PairedCase | Unpaired:
    """Warm up every worker, then trials of one round per side in random order, one side at a time, each
    trial on one process pair (shuffled blocks of one trial per pair, see trial_schedule)."""
    pairs = [workers] if isinstance(workers, dict) else list(workers)
    k = len(pairs)
    first = ["head", "base"] if rng.random() < 0.5 else ["base", "head"]
    for j in rng.permutation(k):
        for side in first:
            reply = pairs[j][side].request(Prepare(spec, policy.warmup_rounds), (Prepared, Unavailable))
            if isinstance(reply, Unavailable):
                return _unavailable(spec, side, reply)
    head_ms: list[float] = []
    base_ms: list[float] = []
    head_first: list[bool] = []
    process: list[int] = []
    block: list[int] = []
    spent_s, next_check = 0.0, policy.min_trials
    while True:
        if not block:
            block = [int(j) for j in rng.permutation(k)]
        j = block.pop(0)
        order = ("head", "base") if rng.random() < 0.5 else ("base", "head")
        for side in order:
            reply = pairs[j][side].request(Round(spec.name), (RoundDone, Unavailable))
            if isinstance(reply, Unavailable):
                return _unavailable(spec, side, reply)
            (head_ms if side == "head" else base_ms).append(reply.ms)
            spent_s += reply.ms / 1e3
        head_first.append(order[0] == "head")
        process.append(j)
        n = len(head_ms)
        check = n >= next_check
        if check:
            next_check = max(n + 1, math.ceil(n * CHECK_GROWTH))
        # Stop only at the end of a block, so that every pair ran as many trials as the others.
        reason = stop_reason(log_ratios(head_ms, base_ms), threshold, n_min=policy.min_trials,
                             max_trials=policy.max_trials, spent_s=spent_s, budget_s=policy.budget_s,
                             check=check and not block, seed=seed)
        if reason and (not block or reason == "max trials"):
            break
    results: dict[str, list[CaseResult]] = {"head": [], "base": []}
    for pair in pairs:
        for side in ("head", "base"):
            reply = pair[side].request(Finish(spec.name), (Finished, Unavailable))
            if isinstance(reply, Unavailable):
                return _unavailable(spec, side, reply)
            results[side].append(reply.result)
    sides = {}
    for side, samples in (("head", head_ms), ("base", base_ms)):
        rs = results[side]
        peaks = [r.peak_mem_gib for r in rs if r.peak_mem_gib is not None]
        # The trials in trial order (each worker's own result holds only its share), the warm-ups of all.
        sides[side] = dataclasses.replace(
            rs[0], samples_ms=tuple(samples), warmup_ms=tuple(w for r in rs for w in r.warmup_ms),
            peak_mem_gib=max(peaks) if peaks else rs[0].peak_mem_gib)
    gpu = {side: tuple(g for r in results[side] for g in (r.gpu_before, r.gpu_after) if g is not None)
           for side in ("head", "base")}
    return PairedCase(sides["head"], sides["base"], tuple(head_first), reason, tuple(process) if k > 1 else (),
                      gpu["head"], gpu["base"])


def _unavailable(spec: CaseSpec, side: str, reply: Unavailable) -> Unpaired:
    if side == "head":
        return Unpaired(spec, FAILED, reply.error)
    return Unpaired(spec, NOT_COMPARABLE, f"the base cannot run it: {reply.error}")


def plan_cases(head: Sequence[CaseSpec], base: Sequence[CaseSpec], keyword: str | None
               ) -> tuple[list[CaseSpec], list[Unpaired]]:
    """The cases to pair (in the head's run order) and those on one side only, after -k."""
    head_sel, base_sel = cases_mod.select(list(head), keyword), cases_mod.select(list(base), keyword)
    if not head_sel and not base_sel:
        raise InputError("keyword", "selects no benchmark case on either side", keyword)
    base_names = {s.name for s in base_sel}
    head_names = {s.name for s in head_sel}
    paired = [s for s in head_sel if s.name in base_names]
    unpaired = [Unpaired(s, NEW, "in the head's grid only") for s in head_sel if s.name not in base_names]
    unpaired += [Unpaired(s, REMOVED, "in the base's grid only") for s in base_sel if s.name not in head_names]
    return paired, unpaired


def measure(settings: CompareSettings, base_commit: str, scratch: Path) -> tuple[CompareRecord, dict[str, str]]:
    """Check out the base, start both workers, measure every selected case; return the record and the
    workers' stderr logs. The worktree and the workers are gone when this returns or raises."""
    head_commit, dirty = head_state(settings.repo)
    labels = {"base": f"base {settings.base_ref} ({base_commit[:12]})", "head": "head (working tree)"}
    started = time.perf_counter()
    with base_worktree(settings.repo, settings.base_ref, base_commit, scratch) as base_tree:
        check_package(base_tree, settings.base_ref)
        trees = {"base": base_tree, "head": settings.repo}
        k = settings.processes
        startup = time.perf_counter()
        with started_workers(settings, trees, labels, scratch, k) as all_ready:
            startup_s = time.perf_counter() - startup
            for pair_ready in all_ready:
                _check_ready(pair_ready, trees, settings.repo)
            ready = all_ready[0]
            workers = [{side: worker for side, (worker, _) in pr.items()} for pr in all_ready]
            for j, pair_ready in enumerate(all_ready):
                for side, (_, r) in pair_ready.items():
                    print(f"{labels[side]} #{j}: cosmos3 from {r.cosmos3_file} (worker pid {r.pid})", flush=True)
            print(f"{2 * k} workers ready in {startup_s:.1f} s ({settings.worker_start})", flush=True)
            device_kind = ready["head"][1].environment.device_kind
            paired, unpaired = plan_cases(ready["head"][1].cases, ready["base"][1].cases, settings.keyword)
            policy = TrialPolicy.for_device(device_kind, settings.controls.rounds).at_least(
                max(min_trials_for(len(paired), settings.criteria.alpha), MIN_TRIALS_PER_PROCESS * k))
            config = settings.criteria.gate_config()
            rng = np.random.default_rng(TRIAL_ORDER_SEED)
            pairs = []
            for i, spec in enumerate(paired, 1):
                print(f"[{i}/{len(paired)}] {spec.name}: warm-up and trials", flush=True)
                outcome = measure_case(spec, workers if k > 1 else workers[0], policy, threshold=config.threshold_for(spec.name), rng=rng,
                                       seed=TRIAL_ORDER_SEED)
                if isinstance(outcome, PairedCase):
                    pairs.append(outcome)
                    ratio = math.exp(float(np.median(outcome.log_ratios)))
                    print(f"    {len(outcome.head_first)} trials, median paired ratio {ratio:.3f} "
                          f"(stopped: {outcome.stopped})", flush=True)
                else:
                    unpaired.append(outcome)
                    print(f"    {outcome.status}: {first_line(outcome.reason)}", flush=True)
        logs = {worker.log_path.stem.removeprefix("worker-"): worker.log_path.read_text(errors="replace")
                for pair in workers for worker in pair.values()}
    sides = {}
    for side, (_, r) in ready.items():
        commit, is_dirty = (head_commit, dirty) if side == "head" else (base_commit, False)
        env = dataclasses.replace(r.environment, commit=commit, commit_dirty=is_dirty, argv=settings.argv)
        sides[side] = Side(side, "working tree" if side == "head" else settings.base_ref, commit, is_dirty,
                           r.cosmos3_file, env)
    record = CompareRecord(
        base=sides["base"], head=sides["head"], criteria=settings.criteria,
        policy=policy, pairs=tuple(pairs), unpaired=tuple(unpaired),
        keyword=settings.keyword, argv=settings.argv, wall_s=time.perf_counter() - started, processes=k,
        startup_s=startup_s, worker_start=settings.worker_start,
    )
    return record, logs


def measure_run(settings: CompareSettings) -> tuple[CompareRecord, dict[str, str]]:
    """`measure` in a scratch folder, stopped cleanly by SIGINT, SIGTERM or SIGHUP: then the run's
    folder holds only interrupted.json (as a stopped `bench run` leaves it) and Interrupted is raised."""
    base_commit = resolve_ref(settings.repo, settings.base_ref)
    scratch = Path(tempfile.mkdtemp(prefix="cosmos3-compare-"))
    try:
        with stopped_by_signals():
            return measure(settings, base_commit, scratch)
    except Interrupted as stop:
        write_interrupted(settings.results_dir / settings.run_id, stop.signum, settings.argv)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the worktree inside is already removed, and pruned
