"""Calibration of `bench compare` itself (`python -m bench calibrate --compare`): N A/A compares and N
compares per injected host slowdown of the head, on a chosen subset of cases; per case, how many A/A
compares raised a false alarm and what share of the slowed ones were caught. It runs compares through
a function it is given, so that tests drive it with scripted compares."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.compare.judge import CompareReport
from bench.core.fmt import code
from bench.core.records import encode_record, new_folder, write_json_atomic
from bench.gate.stats import REGRESSION
from cosmos3 import strict_json
from cosmos3.errors import InputError

DEFAULT_SLOWDOWNS = (0.10,)
COMPARE_CALIBRATION_MD = "compare_calibration.md"
COMPARE_CALIBRATION_JSON = "compare_calibration.json"
COMPARE_CALIBRATION_PNG = "compare_detection.png"
DETECTION_GOAL = 0.9  # the bar: a real +10% caught in >= 9 of 10 compares

# run_compare(slowdown, index): one whole compare (slowdown None: A/A) and its verdicts.
RunCompare = Callable[[float | None, int], CompareReport]


@dataclass(frozen=True)
class CaseCalibration:
    name: str
    aa_runs: int
    false_alarms: int  # A/A compares that judged this case a regression
    detections: dict[str, int]  # slowdown (as "0.1") -> compares that judged it a regression
    injected_runs: dict[str, int]  # slowdown -> compares run with it
    aa_ratio_min: float | None  # the median paired ratio's range over the A/A compares
    aa_ratio_max: float | None


@dataclass(frozen=True)
class CompareCalibration:
    cases: tuple[CaseCalibration, ...]
    aa_runs: int
    runs_per_slowdown: int
    slowdowns: tuple[float, ...]
    aa_compares_failed: int  # A/A compares with any failure (the family-wise false alarms)
    alpha: float
    processes: int
    wall_s: float
    command: str = ""
    load: str = ""


def parse_slowdowns(raw: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise InputError("slowdowns", "must be comma-separated fractions", raw) from None
    if not values or not all(math.isfinite(v) and 0 < v <= 10 for v in values):
        raise InputError("slowdowns", "must be fractions in (0, 10]", raw)
    return values


def run_calibration(run_compare: RunCompare, *, aa_runs: int, slowdowns: Sequence[float], runs_per_slowdown: int,
                    clock: Callable[[], float], command: str = "", load: str = "",
                    progress: Callable[[str], None] = print) -> CompareCalibration:
    """Run the compares in an interleaved order (A/A, then one of each slowdown, repeated), so that a
    change of the machine's load over the calibration hits every kind alike."""
    if aa_runs < 1 or runs_per_slowdown < 0:
        raise InputError("runs", "needs >= 1 A/A compare and >= 0 per slowdown", (aa_runs, runs_per_slowdown))
    started = clock()
    plan: list[float | None] = []
    for i in range(max(aa_runs, runs_per_slowdown)):
        if i < aa_runs:
            plan.append(None)
        if i < runs_per_slowdown:
            plan += list(slowdowns)
    reports: list[tuple[float | None, CompareReport]] = []
    for i, slowdown in enumerate(plan):
        report = run_compare(slowdown, i)
        reports.append((slowdown, report))
        what = "A/A" if slowdown is None else f"+{slowdown:.0%}"
        progress(f"[{i + 1}/{len(plan)}] {what}: {'pass' if report.passed else 'FAIL'}")
    names = sorted({c.name for _, r in reports for c in r.comparisons})
    processes = max((r.record.processes for _, r in reports), default=1)
    alpha = reports[0][1].record.criteria.alpha
    cases = []
    for name in names:
        aa = [c for s, r in reports if s is None for c in r.comparisons if c.name == name]
        ratios = [c.ratio for c in aa]
        detections, runs = {}, {}
        for s in slowdowns:
            got = [c for t, r in reports if t == s for c in r.comparisons if c.name == name]
            detections[f"{s:g}"] = sum(c.verdict == REGRESSION for c in got)
            runs[f"{s:g}"] = len(got)
        cases.append(CaseCalibration(name, len(aa), sum(c.verdict == REGRESSION for c in aa), detections, runs,
                                     min(ratios) if ratios else None, max(ratios) if ratios else None))
    aa_failed = sum(not r.passed for s, r in reports if s is None)
    return CompareCalibration(tuple(cases), aa_runs, runs_per_slowdown, tuple(slowdowns), aa_failed, alpha, processes,
                              clock() - started, command, load)


def render(cal: CompareCalibration) -> str:
    head = ["benchmark", f"A/A false alarms (of {cal.aa_runs})", "A/A median ratio range",
            *(f"detected at +{s:.0%}" for s in cal.slowdowns)]
    rows = []
    for c in cal.cases:
        rng = "n/a" if c.aa_ratio_min is None else f"{c.aa_ratio_min:.3f}-{c.aa_ratio_max:.3f}"
        rows.append([code(c.name), str(c.false_alarms), rng,
                     *(f"{c.detections[f'{s:g}']}/{c.injected_runs[f'{s:g}']}" for s in cal.slowdowns)])
    lines = [
        "# Calibration of `bench compare`", "",
        (f"{cal.aa_runs} A/A compares ({cal.aa_compares_failed} failed as a whole, alpha {cal.alpha:g}) and "
        f"{cal.runs_per_slowdown} per injected head slowdown, {cal.processes} worker process(es) per side, "
        f"{cal.wall_s:.0f} s in all. A detection is a `regression` verdict on the case."), "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows), "",
    ]
    if cal.command:
        lines += [f"- command: `{cal.command}`"]
    if cal.load:
        lines += [f"- load: {cal.load}"]
    return "\n".join(lines) + "\n"


def plot(cal: CompareCalibration, path: Path) -> bool:
    if not cal.cases or not cal.slowdowns or not cal.runs_per_slowdown:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in cal.cases:
        xs = [0.0, *cal.slowdowns]
        ys = [c.false_alarms / max(c.aa_runs, 1),
              *(c.detections[f"{s:g}"] / max(c.injected_runs[f"{s:g}"], 1) for s in cal.slowdowns)]
        ax.plot([100 * x for x in xs], ys, marker="o", label=c.name)
    ax.axhline(DETECTION_GOAL, color="grey", linestyle=":", linewidth=1)
    ax.axhline(cal.alpha, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("injected head slowdown (%)")
    ax.set_ylabel("share of compares judged a regression")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write(cal: CompareCalibration, out_dir: Path) -> Path:
    """The JSON, the markdown table and the plot into the new folder `out_dir`, all or nothing."""
    with new_folder(out_dir) as staging:
        write_json_atomic(staging / COMPARE_CALIBRATION_JSON, encode_record(cal))
        (staging / COMPARE_CALIBRATION_MD).write_text(render(cal))
        plot(cal, staging / COMPARE_CALIBRATION_PNG)
    return Path(out_dir) / COMPARE_CALIBRATION_MD


def load(path: Path) -> dict:
    return strict_json.loads(Path(path).read_text(), str(path))
