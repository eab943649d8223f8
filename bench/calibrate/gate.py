"""Calibration of the gate: how often unchanged code fails it (A/A), and how often injected GPU work
of a given size is caught, per case and metric. It reads run records; it never times anything."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from bench.core.fmt import DASH, code
from bench.core.records import RunRecord, encode_record, merge_counters, merge_runs, new_folder, write_json_atomic
from bench.gate.rules import CounterRule, DeviceTimeRule, GateConfig, LatencyRule, evaluate
from bench.measure.controls import MAX_INJECTED_FRACTION
from cosmos3.errors import InputError

# The metrics calibrated: the gate rules that judge one case against the baseline.
METRICS = (LatencyRule.name, DeviceTimeRule.name, CounterRule.name)
# "Reliably detected": caught in at least this share of the injected runs.
DETECTION_GOAL = 0.95
DEFAULT_SIZES = (0.02, 0.03, 0.05, 0.10)
DEFAULT_CASES = ("latent_prep[single_frame-*]", "vae_encode[*-1f]")
# The extra-work negative controls, by the run label that names them: what each adds to every round.
CONTROLS = {"sync": "one more host-device synchronisation", "kernel": "one more small kernel"}
CALIBRATION_MD, CALIBRATION_JSON, CALIBRATION_PNG = "calibration.md", "calibration.json", "detection_rate.png"
PLOT_DPI = 120


@dataclass(frozen=True)
class Detection:
    size: float  # injected GPU work, a fraction of the case's device time
    detected: int
    runs: int

    @property
    def rate(self) -> float:
        return self.detected / self.runs


@dataclass(frozen=True)
class CalibrationRow:
    """One case and metric: false alarms over the A/A runs, detections per injected size."""

    case: str
    metric: str
    false_alarms: int
    aa_runs: int
    detections: tuple[Detection, ...]

    @property
    def smallest_reliable(self) -> float | None:
        """The smallest injected size from which every size up was caught in at least DETECTION_GOAL of its
        runs. A small size caught by chance below a larger one that was missed is not a detection limit."""
        reliable = None
        for d in sorted(self.detections, key=lambda d: d.size, reverse=True):
            if d.rate < DETECTION_GOAL:
                break
            reliable = d.size
        return reliable


@dataclass(frozen=True)
class Determinism:
    """Were a case's work counters identical in every unchanged run (baseline and A/A)?"""

    case: str
    runs: int
    varying_counters: tuple[str, ...]  # () when every run counted the same work


@dataclass(frozen=True)
class ControlRow:
    """One case and negative control: how many of its runs the counters rule failed, and what it said."""

    case: str
    control: str  # a key of CONTROLS
    caught: int
    runs: int
    message: str | None  # the counters rule's failure in the first caught run; None when none was caught


@dataclass(frozen=True)
class Calibration:
    rows: tuple[CalibrationRow, ...]
    determinism: tuple[Determinism, ...]
    baseline_runs: int
    aa_runs: int
    device_name: str
    config: GateConfig
    controls: tuple[ControlRow, ...] = ()


def failures(run: RunRecord, baseline: RunRecord, config: GateConfig) -> dict[tuple[str, str], str]:
    """The failure message of each (case, metric) whose rule failed in this run."""
    report = evaluate(run, baseline, config)
    return {(f.subject, f.rule): f.failure for f in report.findings if f.rule in METRICS and f.failure}


def flagged(run: RunRecord, baseline: RunRecord, config: GateConfig) -> set[tuple[str, str]]:
    """(case, metric) pairs whose rule failed in this run."""
    return set(failures(run, baseline, config))


def analyse(
    baseline_runs: Sequence[RunRecord],
    aa_runs: Sequence[RunRecord],
    injected: Mapping[float, Sequence[RunRecord]],
    config: GateConfig | None = None,
    controls: Mapping[str, Sequence[RunRecord]] | None = None,
) -> Calibration:
    """Gate every A/A, injected and control run against the baseline merged from `baseline_runs`; count."""
    if not baseline_runs:
        raise InputError("baseline_runs", "needs at least one run to merge into the baseline")
    if not aa_runs:
        raise InputError("aa_runs", "needs at least one unchanged run to count false alarms")
    config = config or GateConfig()
    baseline = merge_runs(list(baseline_runs)) if len(baseline_runs) > 1 else baseline_runs[0]
    aa = [flagged(run, baseline, config) for run in aa_runs]
    by_size = {size: [flagged(run, baseline, config) for run in runs] for size, runs in sorted(injected.items())}
    rows = []
    for case in baseline.cases:
        for metric in METRICS:
            if metric != LatencyRule.name and case.counters is None:
                continue
            if metric == DeviceTimeRule.name and not case.counters.device_ms_samples:
                continue  # no device (CPU): device time is not measured
            key = (case.name, metric)
            rows.append(CalibrationRow(
                case=case.name, metric=metric, false_alarms=sum(key in f for f in aa), aa_runs=len(aa),
                detections=tuple(Detection(size, sum(key in f for f in flags), len(flags))
                                 for size, flags in by_size.items()),
            ))
    unchanged = [*baseline_runs, *aa_runs]
    determinism = []
    for case in baseline.cases:
        found = [r.by_name()[case.name].counters for r in unchanged if case.name in r.by_name()]
        if found and all(c is not None for c in found):
            determinism.append(Determinism(case.name, len(found), merge_counters(found).varying_counters))
    control_rows = []
    for control, runs in sorted((controls or {}).items()):
        found = [failures(run, baseline, config) for run in runs]
        for case in baseline.cases:
            caught = [f[(case.name, CounterRule.name)] for f in found if (case.name, CounterRule.name) in f]
            control_rows.append(ControlRow(case.name, control, len(caught), len(runs), caught[0] if caught else None))
    return Calibration(tuple(rows), tuple(determinism), len(baseline_runs), len(aa_runs),
                       baseline.environment.device_name, config, tuple(control_rows))


def render(cal: Calibration) -> str:
    sizes = sorted({d.size for row in cal.rows for d in row.detections})
    header = ["case", "metric", f"false alarms / {cal.aa_runs}", *(f"caught at +{s:.0%}" for s in sizes),
              f"smallest caught in >= {DETECTION_GOAL:.0%}"]
    lines = [
        "# cosmos3-bench: gate calibration",
        "",
        (f"Device: {cal.device_name}. Baseline merged from {cal.baseline_runs} runs; {cal.aa_runs} unchanged (A/A) "
        f"runs gated against it; injected GPU work sized to a fraction of each case's device time "
        f"(on a CPU, a host spin of that fraction of the round). Gate: threshold +{cal.config.latency_threshold:.0%} "
        f"wall, +{cal.config.device_threshold:.0%} device, noise k {cal.config.noise_k:g}, alpha {cal.config.alpha:g}."),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in cal.rows:
        caught = [f"{d.detected}/{d.runs}" for d in sorted(row.detections, key=lambda d: d.size)]
        smallest = DASH if row.smallest_reliable is None else f"+{row.smallest_reliable:.0%}"
        lines.append(f"| {code(row.case)} | {row.metric} | {row.false_alarms} | " + " | ".join(caught)
                     + f" | {smallest} |")
    if cal.determinism:
        lines += ["", "## Work counters across the unchanged runs", "",
                  "| case | runs | identical in every run |", "|---|---|---|"]
        lines += [f"| {code(d.case)} | {d.runs} | " + ("yes" if not d.varying_counters else
                  f"no: {', '.join(d.varying_counters)} varied") + " |" for d in cal.determinism]
    if cal.controls:
        lines += ["", "## Negative controls: extra work the counters rule must name", "",
                  "| case | control | caught | the counters rule's message |", "|---|---|---|---|"]
        lines += [f"| {code(c.case)} | {CONTROLS[c.control]} per round | {c.caught}/{c.runs} | "
                  f"{DASH if c.message is None else c.message} |" for c in cal.controls]
    on_gpu = any(row.metric == DeviceTimeRule.name for row in cal.rows)
    lines += [
        "",
        ("The counters rule sees the injected work's own kernel (one `torch.cuda._sleep` launch), so it catches "
         "every injected run whatever its size; its A/A column is the one that matters." if on_gpu else
         "Without a GPU the injected work is a host spin, which no counter sees; the counters rule's A/A column "
         "is the one that matters."),
        "",
    ]
    return "\n".join(lines)


def figure(cal: Calibration) -> Figure | None:
    """Detection rate against injected size, one panel per timed metric; None without injected runs."""
    rows = [r for r in cal.rows if r.metric != CounterRule.name and r.detections]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, metric in zip(axes, (LatencyRule.name, DeviceTimeRule.name), strict=True):
        for row in (r for r in rows if r.metric == metric):
            points = sorted((d.size * 100, d.rate * 100) for d in row.detections)
            ax.plot(*zip(*points, strict=True), marker="o", label=row.case)
        ax.axhline(DETECTION_GOAL * 100, color="red", linestyle="--", linewidth=1)
        ax.set(title=metric, xlabel="injected GPU work, % of device time", ylabel="runs caught, %")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(cal: Calibration, path: Path) -> bool:
    """Save `figure(cal)` to `path`; False (nothing written) without injected runs."""
    fig = figure(cal)
    if fig is None:
        return False
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return True


def write(cal: Calibration, out_dir: Path) -> Path:
    """calibration.md, calibration.json and the plot into the new folder `out_dir`, all or nothing."""
    with new_folder(out_dir) as staging:
        (staging / CALIBRATION_MD).write_text(render(cal))
        write_json_atomic(staging / CALIBRATION_JSON, encode_record(cal))
        plot(cal, staging / CALIBRATION_PNG)
    return Path(out_dir) / CALIBRATION_MD


def parse_sizes(raw: str) -> tuple[float, ...]:
    try:
        sizes = tuple(float(x) for x in raw.split(","))
    except ValueError:
        raise InputError("sizes", "must read FRACTION[,FRACTION...], e.g. 0.02,0.03,0.05,0.10", raw) from None
    if not sizes or not all(math.isfinite(s) and 0 < s <= MAX_INJECTED_FRACTION for s in sizes):
        raise InputError("sizes", f"must be fractions in (0, {MAX_INJECTED_FRACTION:g}]", raw)
    return sizes


def step_label(size: float | None) -> str:
    """The folder prefix of a calibration step's runs: 'baseline', 'aa' or 'gpu0.03'."""
    return f"gpu{size:g}"


@dataclass(frozen=True)
class PlannedRun:
    """One run of a calibration: its folder name ('<label>-<i>') and what it injects."""

    run_id: str
    size: float | None = None  # injected GPU work (step gpu)
    control: str | None = None  # a key of CONTROLS (step controls)


def schedule(
    steps: Iterable[str],
    *,
    baseline_runs: int,
    aa_runs: int,
    sizes: Sequence[float],
    runs_per_size: int,
    runs_per_control: int,
    seed: int = 0,
) -> list[PlannedRun]:
    """Every run of the chosen steps, in the order to measure them.

    The baseline's runs come first: everything else is gated against them. The A/A, injected and
    control runs are then interleaved in blocks, block i holding run i of each of them in a seeded
    random order (as asv and pyperf interleave what they compare). A call that stops early thus leaves
    every condition about equally measured, and a drift of the runner over a call falls on all alike.
    """
    steps = set(steps)
    conditions = []  # (label, runs, PlannedRun fields)
    if "aa" in steps:
        conditions.append(("aa", aa_runs, {}))
    if "gpu" in steps:
        conditions += [(step_label(size), runs_per_size, {"size": size}) for size in sizes]
    if "controls" in steps:
        conditions += [(control, runs_per_control, {"control": control}) for control in CONTROLS]
    planned = [PlannedRun(f"baseline-{i}") for i in range(1, baseline_runs + 1)] if "baseline" in steps else []
    runs_of = [[PlannedRun(f"{label}-{i}", **fields) for i in range(1, count + 1)] for label, count, fields in conditions]
    rng = random.Random(seed)
    for row in itertools.zip_longest(*runs_of):  # row i: run i of each condition that has one
        block = [run for run in row if run is not None]
        rng.shuffle(block)
        planned += block
    return planned


class CalibrationRuns(NamedTuple):
    """A calibration folder's runs, sorted by their step."""

    baseline: list[RunRecord]
    aa: list[RunRecord]
    injected: dict[float, list[RunRecord]]  # by injected size
    controls: dict[str, list[RunRecord]]  # by CONTROLS key


def group_runs(runs: Iterable[tuple[str, RunRecord]]) -> CalibrationRuns:
    """Sort a calibration folder's runs by their step, from their folder names."""
    grouped = CalibrationRuns([], [], {}, {})
    for name, run in runs:
        step = name.rsplit("-", 1)[0]
        if step == "baseline":
            grouped.baseline.append(run)
        elif step == "aa":
            grouped.aa.append(run)
        elif step in CONTROLS:
            grouped.controls.setdefault(step, []).append(run)
        elif step.startswith("gpu"):
            grouped.injected.setdefault(float(step.removeprefix("gpu")), []).append(run)
    return grouped
