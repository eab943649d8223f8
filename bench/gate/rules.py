"""The regression gate: compares a run with its baseline and with itself; it never times anything."""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from bench.core import telemetry
from bench.core.cases import KINDS
from bench.core.fmt import DASH, code, fmt_change, fmt_gib, fmt_ms, fmt_p, fmt_ratio_ci
from bench.core.records import COUNTERS, CaseResult, Environment, RunRecord, WorkCounters, matches
from bench.core.strategies import BY_NAME, STRATEGIES
from bench.gate import stats
from bench.gate.stats import CI_LEVEL, OK, REGRESSION
from cosmos3.errors import InputError, check_number

DEFAULT_LATENCY_THRESHOLD = 0.05  # a median may grow by 5% before it counts as a regression
# Device time has no launch or host noise in it, so it can be held tighter than wall time.
DEFAULT_DEVICE_THRESHOLD = 0.03
DEFAULT_ALPHA = 0.01  # one-sided Mann-Whitney significance level
DEFAULT_MEMORY_THRESHOLD = 0.01  # peak memory is deterministic enough for a tight bound
DEFAULT_BOOTSTRAP_RESAMPLES = stats.BOOTSTRAP_RESAMPLES
# A slowdown must also exceed this many run-to-run standard deviations (the spread of the per-run
# medians in a baseline merged from several runs) before it counts. On a shared H100 VM, leave-one-out
# over five unchanged runs flagged 4 of 84 comparisons at 2 and none at 3 (docs/statistics.md, docs/history.md).
DEFAULT_NOISE_K = 3.0
# From the kind registry (bench.core.cases.KINDS): the kinds that run several encode strategies on the same grid,
# so they can be compared within a run (ours, diffusers' prepare_latents both ways, e2e); those that must reach
# min_speedup there (latent preparation, in either implementation: end to end denoising dilutes the saving);
# and per end-to-end kind, stage name -> the kind that measures that stage alone.
STRATEGY_BENCHMARKS = tuple(kind for kind, entry in KINDS.items() if entry.strategies_compared)
SPEEDUP_GATED = frozenset(kind for kind, entry in KINDS.items() if entry.speedup_gated)
STAGE_BENCHMARKS = {kind: dict(entry.stages_measured_alone) for kind, entry in KINDS.items()
                    if entry.stages_measured_alone}

# Verdicts. A finding fails the gate when its rule gives it a failure message (regression, too few samples,
# missing, failed); the others only describe. OK, FASTER, REGRESSION and NOT_SIGNIFICANT, the verdicts of a
# median ratio, are bench.gate.stats's.
TOO_FEW = "too few samples"
# Device time is a second opinion beside latency: where its samples could never reach alpha (a baseline
# profiled 3 rounds a case), the rule says so and passes, and latency still judges the case.
CANNOT_JUDGE = "cannot judge"
NOT_MEASURED = "not measured"
MISSING = "missing"
NEW = "new"
FAILED = "failed"


@dataclass(frozen=True)
class GateConfig:
    """What the gate tolerates. Thresholds are fractions: 0.05 = 5%."""

    latency_threshold: float = DEFAULT_LATENCY_THRESHOLD
    device_threshold: float = DEFAULT_DEVICE_THRESHOLD
    # Benchmark name or pattern -> threshold; an exact name wins, else the first pattern that matches.
    latency_overrides: Mapping[str, float] = field(default_factory=dict)
    alpha: float = DEFAULT_ALPHA
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD
    # Names or patterns of baseline benchmarks that this run need not contain.
    exclude: frozenset[str] = frozenset()
    # Strategy name -> the factor it must beat the path it replaced by (bench.core.strategies; unnamed: its default).
    min_speedups: Mapping[str, float] = field(default_factory=dict)
    noise_k: float = DEFAULT_NOISE_K
    bootstrap_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "latency_overrides", dict(self.latency_overrides))
        object.__setattr__(self, "exclude", frozenset(self.exclude))
        for name in self.min_speedups:
            if name not in BY_NAME:
                raise InputError("min_speedups", f"must name strategies among {', '.join(BY_NAME)}", name)
        object.__setattr__(self, "min_speedups",
                           {s.name: self.min_speedups.get(s.name, s.default_min_speedup) for s in STRATEGIES})
        # One rule for every number (cosmos3.errors.check_number): finite, so no limit switches a rule off.
        for name in ("latency_threshold", "device_threshold", "memory_threshold", "noise_k"):
            check_number(name, getattr(self, name), at_least=0)
        for pattern, value in self.latency_overrides.items():
            check_number(f"latency_overrides[{pattern}]", value, at_least=0)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise InputError("alpha", "must lie strictly between 0 and 1", self.alpha)
        for strategy in STRATEGIES:
            check_number(strategy.speedup, self.min_speedups[strategy.name], at_least=1)
        check_number("bootstrap_resamples", self.bootstrap_resamples, at_least=1, integer=True)
        check_number("seed", self.seed, at_least=0, integer=True)

    def threshold_for(self, name: str) -> float:
        if name in self.latency_overrides:
            return self.latency_overrides[name]
        for pattern, value in self.latency_overrides.items():
            if matches(name, pattern):
                return value
        return self.latency_threshold

    def excluded(self, name: str) -> bool:
        return any(matches(name, pattern) for pattern in self.exclude)


@dataclass(frozen=True)
class LatencyComparison:
    name: str
    baseline_median_ms: float
    current_median_ms: float
    ratio: float  # current median / baseline median
    ci_low: float | None  # CI_LEVEL bootstrap interval of the ratio; None with too few samples
    ci_high: float | None
    p_value: float | None  # one-sided: is the current run slower? None with too few samples
    threshold: float  # the configured threshold for this benchmark
    noise_cv: float | None  # run-to-run coefficient of variation of the baseline's run medians
    allowed: float  # the slowdown tolerated: max(threshold, noise_k * noise_cv)
    verdict: str
    note: str = ""
    what: str = "latency"  # "latency" (wall time of the timed rounds) | "device time" (kernels, profiled rounds)
    gpu_note: str | None = None  # a regression's GPU state differed from the baseline's (telemetry.sm_clock_note)

    @property
    def failure(self) -> str | None:
        if self.verdict in (REGRESSION, TOO_FEW):
            return f"{self.name}: {self.note}"
        return None


@dataclass(frozen=True)
class MemoryComparison:
    """The case's own memory (peak minus what was resident when it started), against the baseline's.

    The weights resident before the case (1.33 GiB for the VAE at wan22) would dilute a 1% limit on
    the peak into a 3% one on what the stage itself allocates; the working set is what a change moves.
    """

    name: str
    baseline_gib: float | None  # working memory
    current_gib: float | None
    ratio: float | None
    verdict: str
    threshold: float = DEFAULT_MEMORY_THRESHOLD
    baseline_peak_gib: float | None = None
    current_peak_gib: float | None = None

    @property
    def failure(self) -> str | None:
        if self.verdict != REGRESSION:
            return None
        return (
            f"{self.name}: working memory {self.current_gib:.3f} GiB vs baseline {self.baseline_gib:.3f} GiB "
            f"({fmt_change(self.ratio)}, allowed +{self.threshold:.1%}; peak {fmt_gib(self.current_peak_gib)} vs "
            f"{fmt_gib(self.baseline_peak_gib)} GiB): memory regression"
        )


@dataclass(frozen=True)
class StrategyPair:
    """An optimised strategy and the one it replaced: the run itself must show the gain."""

    new: str
    old: str
    min_factor: float  # old median / new median must reach this where gated
    min_frames: int = 1  # cases with fewer frames are reported, not gated
    cuda_only: bool = False  # gated only on a GPU (on the CPU the gain is not the one that matters)
    # Gated only at these resolutions (where a measurement supports min_factor); None: at every one.
    resolutions: frozenset[str] | None = None


@dataclass(frozen=True)
class SpeedupCheck:
    benchmark: str
    resolution: str
    num_frames: int
    new: str  # the optimised strategy
    old: str  # the strategy it replaced
    new_median_ms: float
    old_median_ms: float
    factor: float  # old median / new median
    min_factor: float | None  # None where the factor is only reported
    passed: bool

    @property
    def name(self) -> str:
        return f"{self.benchmark}[{self.new}-vs-{self.old}-{self.resolution}-{self.num_frames}f]"

    @property
    def reduction(self) -> float:
        """Fraction of the old strategy's time that the new one saves: 1 - new / old."""
        return 1 - 1 / self.factor

    @property
    def failure(self) -> str | None:
        if self.passed:
            return None
        return (
            f"{self.name}: {self.new} is only {self.factor:.2f}x faster than {self.old} "
            f"({self.new_median_ms:.2f} vs {self.old_median_ms:.2f} ms; needs >= {self.min_factor:.2f}x); "
            f"has the {self.new} encode been reverted?"
        )


def compare_samples(
    name: str,
    current: Sequence[float],
    baseline: Sequence[float],
    run_medians: Sequence[float],
    threshold: float,
    config: GateConfig,
    what: str = "latency",
) -> LatencyComparison:
    """Verdict on one benchmark's median (wall time or device time): a regression needs both size
    and significance (alpha).

    Size: the ratio of medians must exceed the threshold and, where the baseline was merged from
    several runs, noise_k run-to-run standard deviations of its per-run medians. The rounds of one
    process are not independent draws (they share its clocks and host load), so a within-run test
    alone calls a shift between two quiet processes significant.
    """
    cur, base = np.asarray(current), np.asarray(baseline)
    cur_median, base_median = float(np.median(cur)), float(np.median(base))
    ratio = cur_median / base_median
    noise_cv = stats.run_to_run_cv(run_medians)
    allowed = threshold if noise_cv is None else max(threshold, config.noise_k * noise_cv)
    common = {
        "name": name,
        "baseline_median_ms": base_median,
        "current_median_ms": cur_median,
        "ratio": ratio,
        "threshold": threshold,
        "noise_cv": noise_cv,
        "allowed": allowed,
        "what": what,
    }
    if not stats.testable(len(cur), len(base), config.alpha):
        note = (
            f"{what}: only {len(cur)} samples in this run and {len(base)} in the baseline; too few for a "
            f"one-sided test at alpha={config.alpha:g}"
        )
        verdict = TOO_FEW
        if what != "latency":
            verdict, note = CANNOT_JUDGE, f"{note}, so this rule cannot judge it ({fmt_change(ratio)}; latency does)"
        return LatencyComparison(**common, ci_low=None, ci_high=None, p_value=None, verdict=verdict, note=note)

    p_slower = stats.mann_whitney_p(cur, base, "greater")
    p_faster = stats.mann_whitney_p(cur, base, "less")
    ci_low, ci_high = stats.ratio_ci(cur, base, resamples=config.bootstrap_resamples, seed=config.seed)
    label = "median" if what == "latency" else f"{what} median"
    change = f"{label} {cur_median:.2f} ms vs baseline {base_median:.2f} ms ({fmt_change(ratio)})"
    limit = f"+{allowed:.1%}" + ("" if allowed == threshold else f" ({config.noise_k:g} x run-to-run CV {noise_cv:.1%})")
    verdict, why = stats.verdict(ratio, allowed, config.alpha, p_slower, p_faster)
    note = {
        stats.SLOWER: f"{change} > {limit} with p={p_slower:.2g} < {config.alpha:g}: {what} regression",
        stats.NOISE: f"{change} but p={p_slower:.2g} >= {config.alpha:g}: within the noise",
        stats.SIGNIFICANT: f"{change}: significant but within the allowed {limit}",
    }.get(why, "")
    return LatencyComparison(**common, ci_low=ci_low, ci_high=ci_high, p_value=p_slower, verdict=verdict, note=note)


def with_gpu_note(c: LatencyComparison, current: CaseResult, baseline: CaseResult) -> LatencyComparison:
    """A regression whose SM clocks differ from the baseline's beyond telemetry.SM_CLOCK_LIMIT, or that ran
    throttled, says so. It still fails (exit 1): the timing stands, and a rerun tells code from GPU."""
    if c.verdict != REGRESSION:
        return c
    note = telemetry.sm_clock_note(telemetry.case_readings(current), telemetry.case_readings(baseline),
                                   names=("run", "baseline"))
    if note is None:
        return c
    return dataclasses.replace(c, gpu_note=note, note=f"{c.note}; but the GPU may explain it: {note}")


def compare_latency(current: CaseResult, baseline: CaseResult, config: GateConfig) -> LatencyComparison:
    """Wall time of the timed rounds against the baseline's."""
    return with_gpu_note(compare_samples(current.name, current.samples_ms, baseline.samples_ms,
                                         baseline.run_medians_ms, config.threshold_for(current.name), config),
                         current, baseline)


def compare_device_time(current: CaseResult, baseline: CaseResult, config: GateConfig) -> LatencyComparison | None:
    """Summed kernel time of the profiled rounds against the baseline's; None where either has none."""
    cur, base = current.counters, baseline.counters
    if cur is None or base is None or not cur.device_ms_samples or not base.device_ms_samples:
        return None
    return with_gpu_note(compare_samples(current.name, cur.device_ms_samples, base.device_ms_samples,
                                         baseline.run_device_medians_ms, config.device_threshold, config,
                                         what="device time"), current, baseline)


def compare_memory(current: CaseResult, baseline: CaseResult, config: GateConfig) -> MemoryComparison:
    cur, base = current.working_mem_gib, baseline.working_mem_gib
    peaks = {"baseline_peak_gib": baseline.peak_mem_gib, "current_peak_gib": current.peak_mem_gib}
    if cur is None or base is None:
        return MemoryComparison(current.name, base, cur, None, NOT_MEASURED, config.memory_threshold, **peaks)
    ratio = cur / base if base > 0 else (1.0 if cur == 0 else math.inf)
    verdict = REGRESSION if cur > base * (1 + config.memory_threshold) else OK
    return MemoryComparison(current.name, base, cur, ratio, verdict, config.memory_threshold, **peaks)


def strategy_pairs(config: GateConfig) -> tuple[StrategyPair, ...]:
    """Each strategy against each path it replaced (bench.core.strategies), at the config's factor."""
    return tuple(StrategyPair(s.name, old, config.min_speedups[s.name], min_frames=s.min_frames,
                              cuda_only=s.cuda_only, resolutions=s.resolutions)
                 for s in STRATEGIES for old in s.replaces)


def speedup_checks(run: RunRecord, config: GateConfig) -> tuple[SpeedupCheck, ...]:
    """Each optimised strategy against the one it replaced on the same (benchmark, resolution, frames)."""
    groups: dict[tuple[str, str, int], dict[str, CaseResult]] = {}
    for case in run.cases:
        spec = case.spec
        if spec.benchmark in STRATEGY_BENCHMARKS and spec.strategy:
            groups.setdefault((spec.benchmark, spec.resolution, spec.num_frames), {})[spec.strategy] = case
    cuda = run.environment.device_kind == "cuda"
    checks = []
    for pair in strategy_pairs(config):
        for (benchmark, resolution, frames), by_strategy in groups.items():
            if not {pair.new, pair.old} <= by_strategy.keys():
                continue
            new, old = by_strategy[pair.new].median_ms, by_strategy[pair.old].median_ms
            factor = old / new
            gated = (benchmark in SPEEDUP_GATED and frames >= pair.min_frames and (cuda or not pair.cuda_only)
                     and (pair.resolutions is None or resolution in pair.resolutions))
            min_factor = pair.min_factor if gated else None
            passed = min_factor is None or factor >= min_factor
            checks.append(SpeedupCheck(benchmark, resolution, frames, pair.new, pair.old, new, old, factor,
                                       min_factor, passed))
    return tuple(checks)


class RunIdentity(Protocol):
    """What a run is compared by: an Environment, or a run's plan before it has measured anything."""

    device_name: str
    device_slug: str
    preset: str


def check_compatible(current_env: RunIdentity, baseline_env: Environment, allow_device_mismatch: bool) -> None:
    """Refuse a baseline that would compare unlike with unlike."""
    if current_env.preset != baseline_env.preset:
        # Different presets are different models; no flag makes their timings comparable.
        raise InputError(
            "baseline.preset", f"must equal this run's preset {current_env.preset!r}", baseline_env.preset
        )
    if current_env.device_slug != baseline_env.device_slug and not allow_device_mismatch:
        raise InputError(
            "baseline.device",
            f"was recorded on {baseline_env.device_name!r} ({baseline_env.device_slug}) but this run is on "
            f"{current_env.device_name!r} ({current_env.device_slug}); pass --allow-device-mismatch to compare anyway",
            baseline_env.device_slug,
        )
    if baseline_env.negative_controls:
        raise InputError(
            "baseline.negative_controls", "must be empty: a baseline cannot carry an injected fault",
            list(baseline_env.negative_controls),
        )




# ---- the rules: each judges a run (and its baseline) and says, per subject, whether and why it fails --


@dataclass(frozen=True)
class GateInput:
    """Everything a rule may judge."""

    current: RunRecord
    baseline: RunRecord | None
    config: GateConfig
    failed_benchmarks: tuple[str, ...] = ()  # "name: message" of cases whose benchmark raised

    def pairs(self) -> Iterator[tuple[CaseResult, CaseResult]]:
        """(current, baseline) for every case in both, in the baseline's order."""
        if self.baseline is None:
            return
        now = self.current.by_name()
        for case in self.baseline.cases:
            if case.name in now:
                yield now[case.name], case


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one subject (a case, or a group of cases), with its report row."""

    rule: str
    subject: str
    verdict: str
    row: tuple[str, ...]  # cells under the rule's columns
    failure: str | None = None  # why it fails the gate; None when it passes
    note: str = ""  # worth saying though it passes
    detail: Any = None  # the typed comparison behind the row (plots read it)


class Rule(abc.ABC):
    """A regression rule: one class, one registration in RULES, one section of the report."""

    name: ClassVar[str]
    title: ClassVar[str]  # the report section's heading
    columns: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def judge(self, given: GateInput) -> Iterable[Finding]: ...


class LatencyRule(Rule):
    """Wall time against the baseline: size (threshold, run-to-run noise) and significance."""

    name = "latency"
    title = "Latency against the baseline"
    columns = ("benchmark", "baseline median ms", "new median ms", "IQR ms", "rounds",
               f"ratio [{CI_LEVEL:.0%} CI]", "allowed", "p (slower)", "verdict")

    def judge(self, given: GateInput) -> Iterator[Finding]:
        for current, baseline in given.pairs():
            c = compare_latency(current, baseline, given.config)
            row = (code(c.name), fmt_ms(c.baseline_median_ms), fmt_ms(c.current_median_ms), fmt_ms(current.iqr_ms),
                   str(current.rounds), fmt_ratio_ci(c.ratio, c.ci_low, c.ci_high), f"+{c.allowed:.1%}",
                   fmt_p(c.p_value), c.verdict)
            yield Finding(self.name, c.name, c.verdict, row, c.failure, "" if c.failure else c.note, c)


class DeviceTimeRule(Rule):
    """Device time (summed kernel durations of the profiled rounds) against the baseline: blind to
    CPU launch overhead, which wall time still covers, and so unmoved by host contention."""

    name = "device_time"
    title = "Device time against the baseline (sum of kernel durations per round)"
    columns = ("benchmark", "baseline median ms", "new median ms", "rounds", f"ratio [{CI_LEVEL:.0%} CI]",
               "allowed", "p (slower)", "verdict")

    def judge(self, given: GateInput) -> Iterator[Finding]:
        for current, baseline in given.pairs():
            c = compare_device_time(current, baseline, given.config)
            if c is None:
                continue
            row = (code(c.name), fmt_ms(c.baseline_median_ms), fmt_ms(c.current_median_ms),
                   str(len(current.counters.device_ms_samples)), fmt_ratio_ci(c.ratio, c.ci_low, c.ci_high),
                   f"+{c.allowed:.1%}", fmt_p(c.p_value), c.verdict)
            yield Finding(self.name, c.name, c.verdict, row, c.failure, "" if c.failure else c.note, c)


# What one unit of each counter is called in a failure message: "+1 synchronization per round".
_COUNTER_UNITS = {c.name: (c.one, c.many) for c in COUNTERS}
_COUNTER_COLUMNS = tuple(c for c in COUNTERS if c.column is not None)
IMPROVED = "improved"
VARIES = "varies"


def counter_changes(current: WorkCounters, baseline: WorkCounters) -> dict[str, tuple[int, int]]:
    """counter -> (baseline, current) for every deterministic counter that changed."""
    unstable = set(current.varying_counters) | set(baseline.varying_counters)
    return {
        name: (getattr(baseline, name), getattr(current, name))
        for name in _COUNTER_UNITS
        if name not in unstable and getattr(current, name) != getattr(baseline, name)
    }


def kernel_changes(current: WorkCounters, baseline: WorkCounters) -> list[str]:
    """'+12 launches of <kernel>' for each top kernel whose launches per round changed or that is new."""
    before, after = baseline.launches_of(), current.launches_of()
    out = []
    for name, n in after.items():
        if name in before and n != before[name]:
            out.append(f"{n - before[name]:+d} launches of {name}")
        elif name not in before:
            out.append(f"{name} ({n} launches) is new among the top kernels")
    return out


def _counter_cell(base: WorkCounters, cur: WorkCounters, counter: str) -> str:
    b, c = getattr(base, counter), getattr(cur, counter)
    return f"{b} -> {c}" if b != c else str(c)


class CounterRule(Rule):
    """Work counters are deterministic for fixed shapes: any increase fails, saying what changed."""

    name = "counters"
    title = "Work counters against the baseline (per round)"
    columns = ("benchmark", *(c.column for c in _COUNTER_COLUMNS), "verdict")

    def judge(self, given: GateInput) -> Iterator[Finding]:
        for current, baseline in given.pairs():
            cur, base = current.counters, baseline.counters
            if cur is None or base is None or cur.source != base.source:
                continue
            changes = counter_changes(cur, base)
            grown = {k: v for k, v in changes.items() if v[1] > v[0]}
            unstable = sorted(set(cur.varying_counters) | set(base.varying_counters))
            verdict = REGRESSION if grown else IMPROVED if changes else VARIES if unstable else OK
            failure = None
            if grown:
                parts = []
                for counter, (b, c) in grown.items():
                    one, many = _COUNTER_UNITS[counter]
                    parts.append(f"+{c - b} {one if c - b == 1 else many} per round ({counter} {b} -> {c})")
                kernels = kernel_changes(cur, base)
                failure = f"{current.name}: " + "; ".join(parts) + (f" [{'; '.join(kernels)}]" if kernels else "")
            note = f"counters that varied between rounds, not gated: {', '.join(unstable)}" if unstable else ""
            if changes and not grown:
                note = "fewer: " + ", ".join(f"{k} {b} -> {c}" for k, (b, c) in changes.items())

            row = (code(current.name), *(_counter_cell(base, cur, c.name) for c in _COUNTER_COLUMNS), verdict)
            yield Finding(self.name, current.name, verdict, row, failure, note, (base, cur))


class MemoryRule(Rule):
    """The case's working memory may not grow by more than memory_threshold."""

    name = "memory"
    title = "Working memory against the baseline (peak minus resident)"
    columns = ("benchmark", "baseline GiB", "new GiB", "change", "peak GiB (baseline / new)", "verdict")

    def judge(self, given: GateInput) -> Iterator[Finding]:
        for current, baseline in given.pairs():
            m = compare_memory(current, baseline, given.config)
            if m.verdict == NOT_MEASURED:
                continue
            row = (code(m.name), fmt_gib(m.baseline_gib), fmt_gib(m.current_gib), fmt_change(m.ratio),
                   f"{fmt_gib(m.baseline_peak_gib)} / {fmt_gib(m.current_peak_gib)}", m.verdict)
            yield Finding(self.name, m.name, m.verdict, row, m.failure, detail=m)


class SpeedupRule(Rule):
    """In the run itself: each optimised strategy must beat the one it replaced (latent preparation)."""

    name = "speedup"
    title = "Optimised strategies over the ones they replaced (in this run)"
    columns = ("case", "new ms", "old ms", "speedup", "time saved", "required", "check")

    def judge(self, given: GateInput) -> Iterator[Finding]:
        for s in speedup_checks(given.current, given.config):
            row = (code(s.name), fmt_ms(s.new_median_ms), fmt_ms(s.old_median_ms), f"{s.factor:.2f}x",
                   f"{s.reduction:.1%}", DASH if s.min_factor is None else f">= {s.min_factor:.2f}x",
                   "pass" if s.passed else "FAIL")
            yield Finding(self.name, s.name, OK if s.passed else REGRESSION, row, s.failure, detail=s)


class EquivalenceRule(Rule):
    """A strategy's output must match its reference path's, by the rule the benchmark recorded."""

    name = "equivalence"
    title = "Strategy equivalence"
    columns = ("case", "compared with", "outputs", "max abs err", "max rel err", "rule")

    def judge(self, given: GateInput) -> Iterator[Finding]:
        for case in given.current.cases:
            eq = case.equivalence
            if eq is None:
                continue
            verdict = "bitwise" if eq.bitwise else ("within tolerance" if eq.equivalent else "DIFFERENT")
            failure = None if eq.equivalent else (
                f"{case.name}: outputs differ from {eq.reference} (max abs err {eq.max_abs_err:.3g}, "
                f"max rel err {eq.max_rel_err:.3g}; rule: {eq.rule or 'bitwise'})")
            row = (code(case.name), eq.reference, verdict, f"{eq.max_abs_err:.3g}", f"{eq.max_rel_err:.3g}",
                   eq.rule or DASH)
            yield Finding(self.name, case.name, verdict, row, failure, detail=eq)


# An e2e stage whose median differs from its own stage benchmark (same size, frames, strategy) by more
# than this share, or this many ms, whichever is larger, is flagged: the pipeline charges it for
# something the stage benchmark does not see (or the other way round).
STAGE_MISMATCH_SHARE = 0.15
STAGE_MISMATCH_MS = 5.0
INCONSISTENT = "inconsistent"


class StageConsistencyRule(Rule):
    """Each e2e stage should cost in the pipeline what its stage benchmark says (flagged, not failed)."""

    name = "stage_consistency"
    title = "e2e stages against their stage benchmarks (same size, frames, strategy)"
    columns = ("e2e case", "stage", "in e2e ms", "stage benchmark ms", "difference", "allowed", "verdict")

    def judge(self, given: GateInput) -> Iterator[Finding]:
        cases = given.current.by_name()
        for case in given.current.cases:
            for stage, bench in STAGE_BENCHMARKS.get(case.spec.benchmark, {}).items():
                alone = cases.get(dataclasses.replace(case.spec, benchmark=bench).name)
                in_e2e = case.stage_median_ms.get(stage)
                if alone is None or in_e2e is None:
                    continue
                allowed = max(STAGE_MISMATCH_SHARE * alone.median_ms, STAGE_MISMATCH_MS)
                diff = in_e2e - alone.median_ms
                verdict = INCONSISTENT if abs(diff) > allowed else OK
                note = "" if verdict == OK else (
                    f"{stage} takes {in_e2e:.2f} ms in the pipeline but {alone.median_ms:.2f} ms in {alone.name} "
                    f"({diff:+.2f} ms, allowed +-{allowed:.2f} ms): the pipeline pays for something the stage "
                    "benchmark does not see")
                row = (code(case.name), stage, fmt_ms(in_e2e), fmt_ms(alone.median_ms), f"{diff:+.2f} ms",
                       f"+-{allowed:.2f} ms", verdict)
                yield Finding(self.name, case.name, verdict, row, None, note)


class CoverageRule(Rule):
    """Every baseline case must be measured again (or excluded by name); new cases are listed."""

    name = "coverage"
    title = "Benchmarks in only one of the run and the baseline"
    columns = ("benchmark", "where", "verdict")

    def judge(self, given: GateInput) -> Iterator[Finding]:
        if given.baseline is None:
            return
        now, then = given.current.by_name(), given.baseline.by_name()
        for name in then:
            if name in now:
                continue
            if given.config.excluded(name):
                yield Finding(self.name, name, "excluded", (code(name), "baseline only", "excluded"))
            else:
                failure = f"{name}: in the baseline but missing from this run (pass --exclude NAME if it was removed on purpose)"
                yield Finding(self.name, name, MISSING, (code(name), "baseline only", MISSING), failure)
        for name in now:
            if name not in then:
                yield Finding(self.name, name, NEW, (code(name), "this run only", NEW))


class BenchmarkErrorRule(Rule):
    """A benchmark that raised measured nothing: that fails, and is never mistaken for a skip."""

    name = "errors"
    title = "Benchmarks that failed to run"
    columns = ("benchmark", "error")

    def judge(self, given: GateInput) -> Iterator[Finding]:
        for failure in given.failed_benchmarks:
            name, _, message = failure.partition(": ")
            yield Finding(self.name, name, FAILED, (code(name), message), failure)


# The gate's rules, in report order. A new rule is one class above and one line here.
RULES: tuple[Rule, ...] = (
    BenchmarkErrorRule(),
    LatencyRule(),
    DeviceTimeRule(),
    CounterRule(),
    MemoryRule(),
    SpeedupRule(),
    EquivalenceRule(),
    StageConsistencyRule(),
    CoverageRule(),
)


class Outcome:
    """What a verdict's failures mean for the command: it passes with none, and exits 1 with any."""

    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


@dataclass(frozen=True)
class GateReport(Outcome):
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]
    baseline_environment: Environment | None
    config: GateConfig

    def of(self, rule: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.rule == rule)

    @property
    def failures(self) -> tuple[str, ...]:
        """Every failure, human-readable, each naming its benchmark."""
        return tuple(f.failure for f in self.findings if f.failure)

    @property
    def comparisons(self) -> tuple[LatencyComparison, ...]:
        return tuple(f.detail for f in self.of(LatencyRule.name))

    @property
    def memory(self) -> tuple[MemoryComparison, ...]:
        return tuple(f.detail for f in self.of(MemoryRule.name))

    @property
    def speedups(self) -> tuple[SpeedupCheck, ...]:
        return tuple(f.detail for f in self.of(SpeedupRule.name))

    @property
    def new_names(self) -> tuple[str, ...]:
        return tuple(f.subject for f in self.of(CoverageRule.name) if f.verdict == NEW)

    @property
    def missing_names(self) -> tuple[str, ...]:
        return tuple(f.subject for f in self.of(CoverageRule.name) if f.verdict == MISSING)


def evaluate(
    current: RunRecord,
    baseline: RunRecord | None,
    config: GateConfig,
    *,
    failed_benchmarks: Iterable[str] = (),
    notes: Iterable[str] = (),
    rules: Iterable[Rule] = RULES,
) -> GateReport:
    """Run every rule, collect every finding; the caller prints the failures once and exits with exit_code."""
    given = GateInput(current, baseline, config, tuple(failed_benchmarks))
    findings = tuple(f for rule in rules for f in rule.judge(given))
    notes = list(notes)
    if baseline is None:
        notes.append("no baseline: latency and memory not gated")
    elif baseline.environment.device_slug != current.environment.device_slug:
        notes.append(
            f"baseline from {baseline.environment.device_name}, this run on "
            f"{current.environment.device_name}: ratios compare different devices"
        )
    notes += [f"{f.subject}: {f.note}" for f in findings if f.note]
    return GateReport(findings, tuple(notes), baseline.environment if baseline else None, config)
