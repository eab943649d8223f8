"""Typed benchmark records (a frozen case spec plus raw samples), their validation and their one JSON serializer."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import math
import os
import shutil
import tempfile
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.telemetry import GpuReading
from cosmos3 import strict_json
from cosmos3.errors import InputError
from cosmos3.paths import check_name, check_preset_label, reason

# Bump when a field changes meaning; the loader fills in fields that older files lack.
# 1: free-form `extra` per case. 2: every per-case field typed (warm-up, equivalence, injections).
SCHEMA_VERSION = 2
KNOWN_SCHEMA_VERSIONS = frozenset({1, 2})
# Written into every case for people reading the file; the loader ignores them and derives them again.
_READER_ONLY_KEYS = frozenset({"name", "stats"})


# ---- typed decoding: one rule for every record, every loader ---------------------------------------


def _type_name(hint: Any) -> str:
    """A generic hint as a reader of the file knows it: `tuple[float, ...]`, `dict[str, KernelStat]`."""
    return str(hint).replace(f"{__name__}.", "")


def _decode(value: Any, hint: Any, where: str) -> Any:
    """`value` read from JSON as `hint` (str, int, float, bool, None, X | None, tuple[X, ...],
    dict[str, X] or a record dataclass); InputError naming `where` when it does not fit."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]  # records use X | None only
        return _decode(value, inner, where)
    if hint is type(None):
        if value is not None:
            raise InputError(where, "must be null", value)
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"must be a list ({_type_name(hint)})", value)
        (item, _ellipsis) = typing.get_args(hint)
        return tuple(_decode(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise InputError(where, f"must be an object ({_type_name(hint)})", value)
        _key, item = typing.get_args(hint)
        for k in value:
            if not isinstance(k, str):
                raise InputError(where, "must have string keys", k)
        return {k: _decode(v, item, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return decode_record(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(where, "must be true or false", value)
        return value
    if hint is int:
        # bool is an int in Python, never in a record.
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(where, "must be an integer", value)
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InputError(where, "must be a number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InputError(where, "must be a string", value)
        return value
    raise TypeError(f"{where}: records cannot hold {hint!r}")  # a programming error, not bad input


def decode_record(cls: type, data: Any, where: str, *, ignore: frozenset[str] = frozenset()) -> Any:
    """Build the frozen record `cls` from a JSON object: every key known, every value of its type.

    A key that `cls` lacks is an error (a typo or another tool's file, never silently dropped); a
    missing field takes its default (an older file), and a missing field without one is an error.
    """
    if not isinstance(data, Mapping):
        raise InputError(where, f"must be a JSON object ({cls.__name__})", type(data).__name__)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields) - ignore)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", f"is not a field of {cls.__name__} (known: {sorted(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _decode(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InputError(f"{where}.{name}", "is required")
    try:
        return cls(**kwargs)
    except InputError as exc:  # the record's own rule, named from the file's point of view
        raise InputError(f"{where}.{exc.field}", exc.rule, exc.value) from None


def encode_record(value: Any) -> Any:
    """A record as JSON-ready data: dataclasses as objects, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: encode_record(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [encode_record(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(encode_record(v) for v in value)
    if isinstance(value, Mapping):
        return {k: encode_record(v) for k, v in value.items()}
    return value


def check_samples(where: str, values: tuple[float, ...], *, allow_zero: bool = False, allow_empty: bool = False) -> None:
    """Timings must be finite and positive (or >= 0 where a stage may do nothing): a NaN, a negative or a
    zero sample can only come from a broken measurement, and would make a ratio meaningless."""
    if not values and not allow_empty:
        raise InputError(where, "must hold at least one sample")
    for i, v in enumerate(values):
        ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
        if not ok:
            rule = "must be finite and >= 0" if allow_zero else "must be finite and > 0"
            raise InputError(f"{where}[{i}]", rule, v)


def check_amount(where: str, value: float | None) -> None:
    """An optional amount (memory in GiB): absent, or finite and >= 0."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise InputError(where, "must be finite and >= 0", value)


# ---- the records -------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class CaseSpec:
    """What was measured. `name` is the id used everywhere: `latent_prep[single_frame-1280x720-81f]`.

    Resolutions read WIDTHxHEIGHT, as in the upstream resolution list (1280x720 is 720p landscape).
    """

    benchmark: str  # a bench.core.kinds.Kind
    width: int
    height: int
    num_frames: int
    # "single_frame" | "expand" | "first_frame_2d"; diffusers' kinds: "single_frame" | "shipped"; None where no
    # strategy applies
    strategy: str | None = None

    def __post_init__(self) -> None:
        if not self.benchmark:
            raise InputError("benchmark", "must be a non-empty name", self.benchmark)
        for name in ("width", "height", "num_frames"):
            if getattr(self, name) < 1:
                raise InputError(name, "must be >= 1", getattr(self, name))

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def name(self) -> str:
        parts = ([self.strategy] if self.strategy else []) + [self.resolution, f"{self.num_frames}f"]
        return f"{self.benchmark}[{'-'.join(parts)}]"


def matches(name: str, pattern: str) -> bool:
    """Shell-style match of a case name where only * and ? are wild, so `e2e[*]` matches every e2e case."""
    # fnmatch reads [...] as a character class; case names use brackets literally.
    return fnmatch.fnmatchcase(name, pattern.replace("[", "[[]"))


def parse_pattern_values(items: list[str], field: str) -> dict[str, float]:
    """['e2e[*]=0.10', ...] -> {'e2e[*]': 0.1}: the one parser of every PATTERN=NUMBER option.

    The last '=' splits, so a pattern may hold '='; the value must be a finite number. Ranges
    are the caller's rule (a threshold may be 0, an injected fraction may not).
    """
    out = {}
    for item in items:
        pattern, sep, raw = item.rpartition("=")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not sep or not pattern or not math.isfinite(value):
            raise InputError(field, "must read PATTERN=NUMBER with a finite number, e.g. 'e2e[*]=0.10'", item)
        out[pattern] = value
    return out


@dataclass(frozen=True)
class EquivalenceRecord:
    """How a strategy's output compared with a reference path on the same request (outside the timed rounds)."""

    equivalent: bool  # within the rule's tolerance (the verdict the gate reads)
    bitwise: bool
    max_abs_err: float  # the worst over the compared tensors
    max_rel_err: float  # normwise: max|new - ref| / max|ref|
    reference: str = "expand"  # the path compared against
    rule: str = ""  # the tolerance, in words

    def __post_init__(self) -> None:
        for name in ("max_abs_err", "max_rel_err"):
            value = getattr(self, name)
            if math.isnan(value) or value < 0:  # inf is a verdict (shapes differ), NaN never is
                raise InputError(name, "must be >= 0 (inf where shapes differ)", value)
        if self.bitwise and not self.equivalent:
            raise InputError("equivalent", "must be true when bitwise is", self.equivalent)


# Where work counters come from: "cuda", kernels the device ran; "cpu", aten ops stand in for kernels.
SOURCES = ("cuda", "cpu")
@dataclass(frozen=True)
class CounterSpec:
    """One work counter, as the records, the gate's messages and the counters table all read it: its
    WorkCounters field, what one unit of it is called ("+1 synchronization per round"), and its column in
    the counters table (None: in no table). Adding a counter: an entry here, its WorkCounters and
    counters.RoundCounts fields, and how counters.count_round counts it."""

    name: str
    one: str
    many: str
    column: str | None
    per_round: bool = True  # counted in each profiled round (COUNTS); FLOPs come from one unprofiled round


# In the order the gate's failure messages and the counters table give them.
COUNTERS = (
    CounterSpec("kernel_launches", "kernel launch", "kernel launches", "kernel launches"),
    CounterSpec("syncs", "synchronization", "synchronizations", "syncs"),
    CounterSpec("h2d_copies", "host-to-device copy", "host-to-device copies", "H2D copies"),
    CounterSpec("h2d_bytes", "byte host-to-device", "bytes host-to-device", None),
    CounterSpec("d2h_copies", "device-to-host copy", "device-to-host copies", "D2H copies"),
    CounterSpec("d2h_bytes", "byte device-to-host", "bytes device-to-host", None),
    CounterSpec("flops", "FLOP", "FLOPs", "FLOPs", per_round=False),
)
# The per-round counts compared between rounds; WorkCounters.varying_counters names those that differed.
COUNTS = tuple(c.name for c in COUNTERS if c.per_round)
VARYING_NAMES = (*COUNTS, "flops", "top_kernels")


def check_count(where: str, value: int) -> None:
    if value < 0:
        raise InputError(where, "must not be negative", value)


@dataclass(frozen=True)
class KernelStat:
    """One kernel (CUDA: its demangled name) or aten op (CPU) of a case, per round."""

    name: str
    launches: int  # executions per round
    device_ms: float | None  # summed duration per round (median over rounds); None on CPU

    def __post_init__(self) -> None:
        if not self.name:
            raise InputError("name", "must be a non-empty string", self.name)
        check_count("launches", self.launches)
        if self.device_ms is not None and not (math.isfinite(self.device_ms) and self.device_ms >= 0):
            raise InputError("device_ms", "must be finite and >= 0", self.device_ms)


@dataclass(frozen=True)
class WorkCounters:
    """Per-round work of one case, from profiled rounds beside the timed ones (bench.measure.counters).

    Deterministic for fixed shapes, so runner noise cannot move them. Every count is per round.
    Where rounds disagreed (they should not), a count holds the largest per-round value and
    `varying_counters` names it: a record never hides it.
    """

    source: str  # one of SOURCES
    profiled_rounds: int
    # CUDA: kernels executed on the device (category "kernel"), one per launch; a CUDA graph's
    # kernels count one by one. CPU: every aten op call the profiler records (category "cpu_op"),
    # nested ones, views and allocations included.
    kernel_launches: int
    h2d_copies: int  # host-to-device copies the device executed (Memcpy HtoD); 0 on CPU
    h2d_bytes: int
    d2h_copies: int  # device-to-host copies (Memcpy DtoH); 0 on CPU. Device-to-device copies are in neither.
    d2h_bytes: int
    # Host calls that wait for the device: cudaDeviceSynchronize, cudaStreamSynchronize,
    # cudaEventSynchronize and synchronous cudaMemcpy/2D/3D; the round's own closing sync is not counted.
    # CPU: calls of aten::_local_scalar_dense (`.item()` and kin), which would wait for a GPU.
    syncs: int
    # FLOPs of one round as torch.utils.flop_counter.FlopCounterMode counts them (matmuls,
    # convolutions, attention; elementwise ops count 0), from a separate, unprofiled round.
    flops: int
    # Per profiled round: summed duration of the device's work (kernels, copies, memsets; the sum
    # torch._inductor's do_bench_using_profiling takes), in ms. () on CPU.
    device_ms_samples: tuple[float, ...]
    # Union of the kernels with most launches and (CUDA) most device time, by launches then name.
    top_kernels: tuple[KernelStat, ...]
    # Names from VARYING_NAMES whose per-round values differed between the profiled rounds.
    varying_counters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InputError("source", f"must be one of {SOURCES}", self.source)
        if self.profiled_rounds < 1:
            raise InputError("profiled_rounds", "must be at least 1", self.profiled_rounds)
        for counter in COUNTERS:
            check_count(counter.name, getattr(self, counter.name))
        if self.source == "cpu":
            if self.device_ms_samples:
                raise InputError("device_ms_samples", "must be empty for source 'cpu' (no device)",
                                 list(self.device_ms_samples))
            for i, kernel in enumerate(self.top_kernels):
                if kernel.device_ms is not None:
                    raise InputError(f"top_kernels[{i}].device_ms", "must be null for source 'cpu' (no device)",
                                     kernel.device_ms)
        else:
            if len(self.device_ms_samples) != self.profiled_rounds:
                raise InputError("device_ms_samples", f"must hold one value per profiled round ({self.profiled_rounds})",
                                 len(self.device_ms_samples))
            check_samples("device_ms_samples", self.device_ms_samples, allow_zero=True)
            for i, kernel in enumerate(self.top_kernels):
                if kernel.device_ms is None:
                    raise InputError(f"top_kernels[{i}].device_ms", "must be a number for source 'cuda'")
        for i, name in enumerate(self.varying_counters):
            if name not in VARYING_NAMES:
                raise InputError(f"varying_counters[{i}]", f"must be one of {VARYING_NAMES}", name)

    @property
    def device_ms(self) -> float | None:
        """Median device time per round; None on CPU."""
        return float(np.median(self.device_ms_samples)) if self.device_ms_samples else None

    @property
    def consistent(self) -> bool:
        """True when every profiled round counted the same work."""
        return not self.varying_counters

    def launches_of(self) -> dict[str, int]:
        return {k.name: k.launches for k in self.top_kernels}

    def to_dict(self) -> dict[str, Any]:
        return encode_record(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "counters") -> WorkCounters:
        return decode_record(cls, data, source)


@dataclass(frozen=True)
class CaseResult:
    """Raw samples of one case and what was measured beside them. Statistics are derived, never stored."""

    spec: CaseSpec
    samples_ms: tuple[float, ...]
    # Largest `torch.cuda.max_memory_allocated` over the timed rounds; None where not measurable (CPU).
    peak_mem_gib: float | None = None
    # Memory already allocated when the case started (weights): peak minus this is the working set.
    resident_mem_gib: float | None = None
    # The warm-up rounds, never part of samples_ms.
    warmup_ms: tuple[float, ...] = ()
    # Per-stage raw samples of an end-to-end case, stage name -> one value per round.
    stage_samples_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # The strategy's output against the reference path; None where the case has no such check.
    equivalence: EquivalenceRecord | None = None
    # Negative controls applied to this case's timed rounds, e.g. "slowdown 0.1"; empty in a baseline.
    injected: tuple[str, ...] = ()
    num_inference_steps: int | None = None  # e2e only
    # Work counters and device time from profiled rounds beside the timed ones; None where not profiled.
    counters: WorkCounters | None = None
    # The median of each run merged into this record (a baseline measured in several processes);
    # empty for a single run. Their spread is the run-to-run noise the gate allows for.
    run_medians_ms: tuple[float, ...] = ()
    # Likewise for the device time of each merged run's profiled rounds.
    run_device_medians_ms: tuple[float, ...] = ()
    # What the GPU was doing just before the first and just after the last timed round (bench.core.telemetry);
    # None where not read (no NVML, the CPU).
    gpu_before: GpuReading | None = None
    gpu_after: GpuReading | None = None

    def __post_init__(self) -> None:
        check_samples("samples_ms", self.samples_ms)
        check_samples("run_device_medians_ms", self.run_device_medians_ms, allow_empty=True)
        check_samples("warmup_ms", self.warmup_ms, allow_empty=True)
        check_samples("run_medians_ms", self.run_medians_ms, allow_empty=True)
        for stage, values in self.stage_samples_ms.items():
            # A stage with nothing to do (no image to preprocess) may take no measurable time.
            check_samples(f"stage_samples_ms.{stage}", values, allow_zero=True)
        check_amount("peak_mem_gib", self.peak_mem_gib)
        check_amount("resident_mem_gib", self.resident_mem_gib)
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise InputError("num_inference_steps", "must be >= 1", self.num_inference_steps)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rounds(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def q1_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 25))

    @property
    def q3_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 75))

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def min_ms(self) -> float:
        return float(np.min(self.samples_ms))

    @property
    def working_mem_gib(self) -> float | None:
        """What the case itself allocated at its peak: peak minus what was resident when it started."""
        if self.peak_mem_gib is None or self.resident_mem_gib is None:
            return None
        return self.peak_mem_gib - self.resident_mem_gib

    @property
    def stage_median_ms(self) -> dict[str, float]:
        return {stage: float(np.median(v)) for stage, v in self.stage_samples_ms.items()}


# What the benchmark process writes per case (pytest-benchmark's extra_info): every CaseResult field
# but the samples, which pytest-benchmark keeps itself, and the merge-only run medians.
CASE_INFO_FIELDS = frozenset(f.name for f in dataclasses.fields(CaseResult)) - {
    "samples_ms", "run_medians_ms", "run_device_medians_ms"}


@dataclass(frozen=True)
class Environment:
    """Where a run happened. `device_slug` keys the baseline folder: baselines/<device_slug>/<preset>.json."""

    device_kind: str  # "cuda" | "cpu"
    device_name: str  # e.g. "NVIDIA H100 80GB HBM3"
    device_slug: str  # e.g. "nvidia-h100-80gb-hbm3"
    preset: str
    dtype: str
    torch: str
    diffusers: str
    python: str
    platform: str = ""
    cuda: str | None = None
    cudnn: str | None = None
    driver: str | None = None
    cudnn_benchmark: bool | None = None
    allow_tf32_matmul: bool | None = None
    commit: str | None = None
    commit_dirty: bool | None = None
    date_utc: str = ""
    hostname: str = ""
    # Negative controls switched on for this run (e.g. an injected slowdown); a baseline must have none.
    negative_controls: tuple[str, ...] = ()
    argv: str = ""
    suite_wall_s: float | None = None  # the whole benchmark process, model builds and warm-ups included
    # The runs a merged baseline was built from (their dates and commands); empty for a single run.
    merged_runs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("device_slug", "preset"):
            if not getattr(self, name):
                raise InputError(name, "must be a non-empty name", getattr(self, name))
        # Both become part of a path (baselines/<device_slug>/<preset>.json): one name rule for both.
        check_name("device_slug", self.device_slug)
        check_preset_label("preset", self.preset)
        check_amount("suite_wall_s", self.suite_wall_s)


@dataclass(frozen=True)
class RunRecord:
    """One benchmark run: its environment and every case, in the order they ran."""

    environment: Environment
    cases: tuple[CaseResult, ...]
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if type(self.schema_version) is not int or self.schema_version not in KNOWN_SCHEMA_VERSIONS:
            raise InputError("schema_version", f"must be one of {sorted(KNOWN_SCHEMA_VERSIONS)}", self.schema_version)
        if not self.cases:
            raise InputError("cases", "must hold at least one case (a run that measured nothing proves nothing)")
        seen: set[str] = set()
        for case in self.cases:
            if case.name in seen:
                raise InputError("cases", "must name each case once", case.name)
            seen.add(case.name)

    def by_name(self) -> dict[str, CaseResult]:
        return {case.name: case for case in self.cases}


# ---- files -------------------------------------------------------------------------------------------


def case_to_dict(case: CaseResult) -> dict[str, Any]:
    out = {"name": case.name, **encode_record(case)}
    # For people reading the file; the loader ignores it and derives them again.
    out["stats"] = {"rounds": case.rounds, "median_ms": case.median_ms, "iqr_ms": case.iqr_ms, "min_ms": case.min_ms}
    return out


def run_to_dict(run: RunRecord) -> dict[str, Any]:
    return {
        "schema_version": run.schema_version,
        "environment": encode_record(run.environment),
        "cases": [case_to_dict(c) for c in run.cases],
    }


def _case_label(raw: Any, index: int) -> str:
    """How a case is named in an error: by its name where the file gives one, else by position."""
    name = raw.get("name") if isinstance(raw, Mapping) else None
    return f"cases[{name}]" if isinstance(name, str) and name else f"cases[{index}]"


def _upgrade_v1_case(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Schema 1 kept warm-up, injections, steps and the equivalence report in a free-form `extra`."""
    out = {k: v for k, v in raw.items() if k != "extra"}
    extra = raw.get("extra") or {}
    if not isinstance(extra, Mapping):
        raise InputError(f"{where}.extra", "must be a JSON object", extra)
    for key, value in extra.items():
        if key in ("warmup_ms", "num_inference_steps"):
            out[key] = value
        elif key == "injected_slowdown":
            out["injected"] = [] if value is None else [f"slowdown {value}"]
        elif key == "equivalence":
            out["equivalence"] = _upgrade_v1_equivalence(value, f"{where}.extra.equivalence")
        else:
            raise InputError(f"{where}.extra.{key}", "is not a key schema 1 wrote")
    return out


def _upgrade_v1_equivalence(report: Any, where: str) -> dict[str, Any]:
    if not isinstance(report, Mapping):
        raise InputError(where, "must be a JSON object", report)
    tensors = [v for v in report.values() if isinstance(v, Mapping)]
    worst = {}
    for key in ("max_abs_err", "max_rel_err"):
        values = [t.get(key) for t in tensors]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise InputError(f"{where}.{key}", "must be a number in every compared tensor", values)
        worst[key] = max(values)
    rtol = report.get("rtol")
    return {
        "equivalent": report.get("equivalent"),
        "bitwise": report.get("bitwise"),
        **worst,
        "reference": "expand",
        "rule": f"bitwise, else normwise relative error <= {rtol:g}" if isinstance(rtol, (int, float)) else "",
    }


def run_from_dict(data: Any, *, source: str = "run record") -> RunRecord:
    """Parse and validate a run record (a baseline is one too); InputError names the source, case and field."""
    if not isinstance(data, Mapping):
        raise InputError(source, "must be a JSON object", type(data).__name__)
    version = data.get("schema_version")
    if type(version) is not int or version not in KNOWN_SCHEMA_VERSIONS:
        raise InputError(
            f"{source}.schema_version", f"must be one of {sorted(KNOWN_SCHEMA_VERSIONS)} (this tool's schemas)", version
        )
    unknown = sorted(set(data) - {"schema_version", "environment", "cases"})
    if unknown:
        raise InputError(f"{source}.{unknown[0]}", "is not a field of a run record")
    if "environment" not in data or "cases" not in data:
        raise InputError(source, "is not a valid run record: needs 'environment' and 'cases'")
    env = decode_record(Environment, data["environment"], f"{source}.environment")
    raw_cases = data["cases"]
    if not isinstance(raw_cases, list):
        raise InputError(f"{source}.cases", "must be a list", type(raw_cases).__name__)
    cases = []
    for i, raw in enumerate(raw_cases):
        where = f"{source}.{_case_label(raw, i)}"
        if version == 1 and isinstance(raw, Mapping):
            raw = _upgrade_v1_case(raw, where)
        case = decode_record(CaseResult, raw, where, ignore=_READER_ONLY_KEYS)
        if isinstance(raw.get("name"), str) and raw["name"] != case.name:
            raise InputError(f"{where}.name", f"must match its spec ({case.name})", raw["name"])
        cases.append(case)
    try:
        return RunRecord(environment=env, cases=tuple(cases), schema_version=SCHEMA_VERSION)
    except InputError as exc:
        raise InputError(f"{source}.{exc.field}", exc.rule, exc.value) from None


def load_run(path: Path | str, *, what: str = "run record") -> RunRecord:
    """Read a run record (a baseline is one too). Absent, unreadable, corrupt or invalid files raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(what, "file does not exist", str(path))
    try:
        data = strict_json.loads(path.read_text(), f"{what} {path}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(what, f"must be readable JSON ({exc})", str(path)) from exc
    return run_from_dict(data, source=f"{what} {path}")


def run_from_pytest_benchmark(data: Any, *, source: str = "pytest-benchmark JSON") -> RunRecord:
    """Rebuild the run record from pytest-benchmark's --benchmark-json output (raw data in seconds).

    Each benchmark's extra_info holds the CaseResult fields of CASE_INFO_FIELDS, written by
    bench.measure.harness.record_case; the same typed decoder reads them, so a key on one side only is an error.
    """
    try:
        env_data = data["machine_info"]["cosmos3_environment"]
        benchmarks = data["benchmarks"]
    except (KeyError, TypeError) as exc:
        raise InputError(source, f"lacks what the cosmos3 benchmarks write ({type(exc).__name__}: {exc})") from None
    env = decode_record(Environment, env_data, f"{source}.machine_info.cosmos3_environment")
    if not isinstance(benchmarks, list):
        raise InputError(f"{source}.benchmarks", "must be a list", type(benchmarks).__name__)
    cases = []
    for i, bench in enumerate(benchmarks):
        where = f"{source}.benchmarks[{bench.get('name', i) if isinstance(bench, Mapping) else i}]"
        try:
            info, seconds = bench["extra_info"], bench["stats"]["data"]
        except (KeyError, TypeError) as exc:
            raise InputError(where, f"lacks extra_info or stats.data ({type(exc).__name__}: {exc})") from None
        if not isinstance(info, Mapping) or not isinstance(seconds, list):
            raise InputError(where, "must hold an extra_info object and a stats.data list")
        samples = [s * 1e3 if isinstance(s, (int, float)) and not isinstance(s, bool) else s for s in seconds]
        cases.append(decode_record(CaseResult, {**info, "samples_ms": samples}, f"{where}.extra_info"))
    try:
        return RunRecord(environment=env, cases=tuple(cases))
    except InputError as exc:
        raise InputError(f"{source}.{exc.field}", exc.rule, exc.value) from None


def merge_runs(runs: list[RunRecord]) -> RunRecord:
    """One record from several runs of the same suite on the same device, e.g. a baseline measured in
    several processes: samples pooled, each run's median kept (run_medians_ms), the highest peak memory.

    Runs in one process share its state (clocks, host load, allocator), so their rounds understate
    how much a fresh process varies; the spread of per-run medians is what a new run is compared to.

    The same run twice is refused: it would claim n runs, zero run-to-run noise and counters "identical
    in all n runs" from one measurement. Two runs are the same when their timed samples are: the same
    case names with the same samples_ms, bit for bit (run_fingerprint). Independent measurements never
    repeat every float; the command line also refuses one run folder named twice (bench.cli.baseline).
    """
    if len(runs) < 2:
        raise InputError("runs", "merging needs at least two runs", len(runs))
    first = runs[0].environment
    for run in runs:
        env = run.environment
        for key in ("device_slug", "preset", "dtype"):
            if getattr(env, key) != getattr(first, key):
                raise InputError(f"runs.{key}", f"must be the same in every merged run ({getattr(first, key)!r})",
                                 getattr(env, key))
        if env.negative_controls:
            raise InputError("runs.negative_controls", "must be empty in every merged run",
                             list(env.negative_controls))
    seen: dict[str, int] = {}
    for i, run in enumerate(runs):
        first_seen = seen.setdefault(run_fingerprint(run), i)
        if first_seen != i:
            raise InputError(f"runs[{i}]", f"must be another run than runs[{first_seen}]: the same run twice (the "
                                           "same cases with the same samples_ms, bit for bit) proves no "
                                           "run-to-run noise", run_fingerprint(run)[:16])
    grouped: dict[str, list[CaseResult]] = {}
    for run in runs:
        for case in run.cases:
            grouped.setdefault(case.name, []).append(case)
    cases = []
    for group in grouped.values():
        peaks = [c.peak_mem_gib for c in group if c.peak_mem_gib is not None]
        stages: dict[str, tuple[float, ...]] = {}
        for c in group:
            for stage, values in c.stage_samples_ms.items():
                stages[stage] = stages.get(stage, ()) + tuple(values)
        counters = [c.counters for c in group if c.counters is not None]
        device_medians = tuple(m for c in group if c.counters is not None and c.counters.device_ms_samples
                               for m in (c.run_device_medians_ms or (c.counters.device_ms,)))
        cases.append(dataclasses.replace(
            group[0],
            counters=merge_counters(counters) if counters else None,
            run_device_medians_ms=device_medians,
            samples_ms=tuple(x for c in group for x in c.samples_ms),
            peak_mem_gib=max(peaks) if peaks else None,
            stage_samples_ms=stages,
            run_medians_ms=tuple(m for c in group for m in (c.run_medians_ms or (c.median_ms,))),
        ))
    sources = tuple(s for run in runs for s in (run.environment.merged_runs
                                                or (f"{run.environment.date_utc} {run.environment.argv}".strip(),)))
    env = dataclasses.replace(first, merged_runs=sources, suite_wall_s=None, argv="merged")
    return RunRecord(environment=env, cases=tuple(cases))


def run_fingerprint(run: RunRecord) -> str:
    """What makes two runs the same: sha256 of {case name: samples_ms} as canonical JSON (sorted keys,
    floats as repr writes them, which round-trips every bit)."""
    canonical = json.dumps({c.name: list(c.samples_ms) for c in run.cases}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def merge_counters(group: list[WorkCounters]) -> WorkCounters:
    """One record of several runs' counters: device samples pooled; a count that differs between
    runs keeps the largest value and is named in varying_counters, so the gate will not trust it."""
    first = group[0]
    varying = {name for c in group for name in c.varying_counters}
    counts = {}
    for name in (c.name for c in COUNTERS):
        values = {getattr(c, name) for c in group}
        counts[name] = max(values)
        if len(values) > 1:
            varying.add(name)
    if len({tuple(sorted(c.launches_of().items())) for c in group}) > 1:
        varying.add("top_kernels")
    return dataclasses.replace(
        first, **counts,
        profiled_rounds=sum(c.profiled_rounds for c in group),
        device_ms_samples=tuple(x for c in group for x in c.device_ms_samples),
        varying_counters=tuple(n for n in VARYING_NAMES if n in varying),
    )


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path | str, payload: Any, *, overwrite: bool = False) -> Path:
    """Write JSON to a temporary file beside `path`, fsync it, then rename it into place.

    A reader never sees a half-written file, and an existing file is replaced only when
    `overwrite` is given; otherwise InputError names the file and the flag to pass.
    """
    path = Path(path)
    text = json.dumps(payload, indent=1, allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError("output", f"must be in a folder that can be written ({reason(exc)})", str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; a result file is as readable as any other
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if `path` exists, so two writers can never clobber each other.
            os.link(tmp, path)
    except FileExistsError:
        raise InputError("output", "file exists; pass --force to replace it", str(path)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def new_folder(out_dir: Path | str) -> Iterator[Path]:
    """Write a folder all or nothing: yield a hidden staging folder beside `out_dir`, rename it to
    `out_dir` when the block completes, remove it when the block fails. An existing `out_dir` is
    refused, before and after the block: a report is evidence, and evidence is never edited."""
    out_dir = Path(out_dir)
    if os.path.lexists(out_dir):
        raise InputError("report_dir", "exists; a report is never overwritten (choose a new folder)", str(out_dir))
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    except OSError as exc:
        raise InputError("report_dir", f"must be a folder that can be created ({reason(exc)})", str(out_dir)) from None
    try:
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes 0700; a report is as readable as any folder
        yield staging
        # rename() onto an existing empty folder would succeed on POSIX, so refuse it once more.
        if out_dir.exists():
            raise InputError("report_dir", "appeared while the report was written; never overwritten", str(out_dir))
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def save_run(run: RunRecord, path: Path | str, *, overwrite: bool = False) -> Path:
    return write_json_atomic(path, run_to_dict(run), overwrite=overwrite)


