"""Writes a compare's run folder: the raw pairs (compare.json), the workers' logs, and report/ (summary.md, plot).

Like bench.gate.report, it only reads the record and its verdict; it never measures anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless CI runners
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from bench.compare.judge import PAIR_RULES, CompareReport, first_line, judge
from bench.compare.record import COMPARE_RECORD, FAILED, CompareRecord, Side
from bench.core.fmt import DASH, code, fmt_ms, fmt_p, fmt_ratio_ci, gpu_cells, table
from bench.core.records import encode_record, new_folder, write_json_atomic
from bench.gate.report import ENV_ROWS, PLOT_DPI, SUMMARY_NAME
from bench.gate.stats import CI_LEVEL, FASTER, REGRESSION

REPORT_DIR = "report"
PAIRED_RATIO_PLOT = "paired_ratio.png"
# Beyond this spread of ratios the plot's axis turns logarithmic (an injected 4x slowdown beside +1%).
LOG_AXIS_SPAN = 2.0


def write_compare_run(record: CompareRecord, logs: dict[str, str], run_dir: Path) -> tuple[CompareReport, Path]:
    """compare.json, worker-<side>.log and report/ in the new folder `run_dir`; the verdict and the summary."""
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / COMPARE_RECORD, encode_record(record))
    for side, text in logs.items():
        (run_dir / f"worker-{side}.log").write_text(text)
    report = judge(record)
    return report, write_compare_report(report, run_dir / REPORT_DIR)


# ---- summary.md --------------------------------------------------------------------------------


# The environment rows of a run's report, less those that differ by side by design (commit) or do
# not apply to one side of a compare.
_SIDE_ROWS = tuple(row for row in ENV_ROWS if row[1] not in ("commit", "suite_wall_s", "merged_runs"))


def sides_section(record: CompareRecord) -> list[str]:
    base, head = record.base, record.head

    def row(label: str, get) -> list[str]:
        return [label, *(str(v) if v not in (None, "") else DASH for v in (get(base), get(head)))]

    rows = [
        row("ref", lambda s: s.ref),
        row("commit", lambda s: s.commit[:12] + (" (dirty)" if s.dirty else "")),
        row("cosmos3 from", lambda s: f"`{s.cosmos3_file}`"),
        *(row(label, lambda s, a=attr: getattr(s.environment, a)) for label, attr in _SIDE_ROWS),
        row("negative controls", lambda s: ", ".join(s.environment.negative_controls) or None),
    ]
    return ["## Base and head", "", *table(["", "base", "head"], rows), ""]


def verdict_section(report: CompareReport) -> list[str]:
    title = f"# cosmos3-bench compare: {_side_name(report.record.base)} -> {_side_name(report.record.head)}"
    if report.passed:
        return [title, "", "**PASS**", ""]
    n = len(report.failures)
    return [title, "", f"**FAIL** ({n} failure{'s' if n != 1 else ''})", "", *(f"- {f}" for f in report.failures), ""]


def _side_name(side: Side) -> str:
    ref = "" if side.commit.startswith(side.ref) else f"{side.ref} "  # a ref given as a commit id is said once
    return f"{ref}`{side.commit[:12]}`" + (" (dirty)" if side.dirty else "")


def paired_section(report: CompareReport) -> list[str]:
    if not report.comparisons:
        return []
    header = ["benchmark", "base median ms", "head median ms", "trials", f"head / base [{CI_LEVEL:.0%} CI]",
              "allowed", "p (Holm)", "pairs", "p across pairs (Holm)", "process-to-process spread",
              "within-process spread", "stopped", "verdict"]
    rows = [
        [code(c.name), fmt_ms(c.base_median_ms), fmt_ms(c.head_median_ms), str(c.trials),
         fmt_ratio_ci(c.ratio, c.ci_low, c.ci_high), f"+{c.threshold:.1%}", fmt_p(c.p_adjusted), str(c.processes),
         "n/a" if c.p_process_adjusted is None else fmt_p(c.p_process_adjusted),
         "n/a" if c.process_spread is None else f"{c.process_spread:.1%}", f"{c.within_spread:.1%}", c.stopped,
         f"**{c.verdict}**" if c.failure else c.verdict]
        for c in report.comparisons
    ]
    r = report.record
    explain = (
        "Each trial ran one round on each side, one side at a time, in a seeded random order. The ratio is the "
        "median of the per-trial ratios head/base with a bootstrap interval; p is a one-sided Wilcoxon "
        f"signed-rank test on their logs (is the head slower?), Holm-adjusted over {len(report.comparisons)} "
        f"case(s). Each side ran in {r.processes} worker process(es), as (head, base) pairs sharing the trials "
        "in shuffled blocks; 'p across pairs' is a one-sided t-test on the pairs' median log ratios "
        "(Holm-adjusted too), and the spreads are standard deviations of log ratios: of the pairs' medians, and "
        "of the trials about their own pair's median. A regression needs ratio > 1 + allowed, "
        f"p < {r.criteria.alpha:g} and, with two or more pairs, p across pairs < {r.criteria.alpha:g}."
    )
    return ["## Paired latency", "", explain, "", *table(header, rows), ""]


def gpu_section(report: CompareReport) -> list[str]:
    """Per case, what the GPU was doing on each side (NVML readings before and after the timed rounds)."""
    by_name = {p.name: p for p in report.record.pairs}
    rows = []
    for c in report.comparisons:
        pair = by_name[c.name]
        if not pair.head_gpu and not pair.base_gpu:
            continue
        cells = [code(c.name), *gpu_cells(pair.head_gpu), *gpu_cells(pair.base_gpu), c.gpu_note or ""]
        rows.append(cells)
    if not rows:
        return []
    header = ["benchmark", "head SM MHz", "head max C", "head throttled", "base SM MHz", "base max C",
              "base throttled", "note"]
    explain = ("NVML readings before and after each worker's timed rounds. A regression whose sides' mean SM clocks "
               "differ by more than 5%, or whose either side was throttled, still fails (exit 1), with a note that "
               "the GPU may explain it: rerun before believing it.")
    return ["## GPU", "", explain, "", *table(header, rows), ""]


def rule_sections(report: CompareReport) -> list[str]:
    """The stored-baseline rules on the head's records against the base's ("baseline" = base, "new" = head)."""
    lines: list[str] = []
    for rule in PAIR_RULES:
        findings = [f for f in report.findings if f.rule == rule.name]
        if findings:
            lines += [f"## {rule.title}", "", "Baseline = base, new = head.", "",
                      *table(rule.columns, (f.row for f in findings)), ""]
    return lines


def unpaired_section(report: CompareReport) -> list[str]:
    unpaired = report.record.unpaired
    if not unpaired:
        return []
    rows = [[code(u.name), f"**{u.status}**" if u.status == FAILED else u.status, first_line(u.reason) or DASH]
            for u in unpaired]
    return ["## Cases not compared", "", *table(["benchmark", "status", "why"], rows), ""]


def settings_section(record: CompareRecord) -> list[str]:
    p, c = record.policy, record.criteria
    overrides = ", ".join(f"{k}={v:g}" for k, v in c.overrides.items())
    warm = "each kind's" if p.warmup_rounds is None else str(p.warmup_rounds)
    lines = [
        "## Settings", "",
        (f"- threshold +{c.threshold:.1%}{f' (overrides: {overrides})' if overrides else ''}, alpha {c.alpha:g}, "
         f"memory +{c.memory_threshold:.1%}"),
        (f"- trials per case: {p.min_trials} to {p.max_trials}, round-time budget {p.budget_s:g} s per case, "
         f"warm-up rounds per side: {warm}, trial order seed {record.seed}"),
    ]
    if record.keyword:
        lines.append(f"- cases: `-k {record.keyword}`")
    lines.append(f"- worker processes per side: {record.processes}"
                 + ("" if record.startup_s is None else f", all {2 * record.processes} ready in {record.startup_s:.1f} s")
                 + {None: "", "exec": " (each a fresh interpreter)",
                    "fork": " (forked from one server that had imported torch and diffusers)"}[record.worker_start])
    if record.wall_s is not None:
        lines.append(f"- wall time {record.wall_s:.0f} s (checkout, model builds and warm-ups included)")
    if record.argv:
        lines.append(f"- command: `{record.argv}`")
    return [*lines, ""]


def render_summary(report: CompareReport, plots: Sequence[str] = ()) -> str:
    sections = [
        verdict_section(report),
        sides_section(report.record),
        paired_section(report),
        gpu_section(report),
        rule_sections(report),
        unpaired_section(report),
        ["## Notes", "", *(f"- {n}" for n in report.notes), ""] if report.notes else [],
        settings_section(report.record),
        ["## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""] if plots else [],
    ]
    return "\n".join(line for section in sections for line in section)


# ---- the plot ------------------------------------------------------------------------------------


def plot_paired_ratio(report: CompareReport, path: Path) -> bool:
    """Per case: every trial's ratio (dots), the median ratio with its interval, and the allowed limit."""
    pairs = {p.name: p for p in report.record.pairs}
    comps = report.comparisons
    if not comps:
        return False
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * len(comps)))
    rng = np.random.default_rng(0)  # jitter only
    all_ratios = []
    for y, c in enumerate(comps):
        ratios = np.exp(pairs[c.name].log_ratios)
        all_ratios += [*ratios, c.ci_low, c.ci_high, 1 + c.threshold]
        ax.scatter(ratios, y + rng.uniform(-0.18, 0.18, len(ratios)), s=8, color="tab:gray", alpha=0.5,
                   label="one trial" if y == 0 else None)
        color = "tab:red" if c.verdict == REGRESSION else "tab:green" if c.verdict == FASTER else "tab:blue"
        ax.errorbar([c.ratio], [y], xerr=[[max(0.0, c.ratio - c.ci_low)], [max(0.0, c.ci_high - c.ratio)]],
                    fmt="o", color=color, capsize=4, label=f"median [{CI_LEVEL:.0%} CI]" if y == 0 else None)
        ax.scatter([1 + c.threshold], [y], marker="|", s=400, color="red", zorder=3,
                   label="allowed slowdown" if y == 0 else None)
    ax.axvline(1, color="black", linewidth=1)
    if max(all_ratios) / min(all_ratios) > LOG_AXIS_SPAN:
        ax.set_xscale("log")
        # Plain labels ("0.5", "2") read faster than matplotlib's 5x10^-1.
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_yticks(range(len(comps)), [c.name for c in comps], fontsize=8)
    ax.set_ylim(len(comps) - 0.5, -0.5)
    ax.set(xlabel="head / base, per trial", title="Paired ratio per case")
    height_in = fig.get_size_inches()[1]
    fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / height_in, 1, 1))  # room for the legend below the axis label
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return True


def write_compare_report(report: CompareReport, out_dir: Path) -> Path:
    """summary.md and the plot in the new folder `out_dir`, all or nothing (as bench.gate.report.write_report)."""
    with new_folder(out_dir) as staging:
        plots = [PAIRED_RATIO_PLOT] if plot_paired_ratio(report, staging / PAIRED_RATIO_PLOT) else []
        (staging / SUMMARY_NAME).write_text(render_summary(report, plots))
    return Path(out_dir) / SUMMARY_NAME
