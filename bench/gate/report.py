"""Writes a run's summary.md and plots from its record and gate report; it never re-runs anything."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import matplotlib

matplotlib.use("Agg")  # report writing runs on headless CI runners; never ask for a display
import matplotlib.pyplot as plt
from matplotlib import ticker

from bench.core import telemetry
from bench.core.cases import KINDS
from bench.core.fmt import DASH, DIFFUSERS_HEADING, code, fmt_change, fmt_gib, fmt_ms, fmt_share, gpu_cells, table
from bench.core.kinds import Kind
from bench.core.records import CaseResult, Environment, RunRecord, new_folder
from bench.gate import upstream
from bench.gate.rules import CI_LEVEL, RULES, GateReport, SpeedupCheck

SUMMARY_NAME = "summary.md"
GITHUB_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
PLOT_DPI = 120

Plot = Callable[[RunRecord, GateReport, Path], bool]
T = TypeVar("T")


# ---- summary.md sections -----------------------------------------------------------------------


def verdict_section(gate: GateReport) -> list[str]:
    if gate.passed:
        return ["# cosmos3-bench: PASS", ""]
    lines = [f"# cosmos3-bench: FAIL ({len(gate.failures)} failure{'s' if len(gate.failures) != 1 else ''})", ""]
    return lines + [f"- {failure}" for failure in gate.failures] + [""]


ENV_ROWS = (
    ("device", "device_name"),
    ("preset", "preset"),
    ("dtype", "dtype"),
    ("torch", "torch"),
    ("diffusers", "diffusers"),
    ("CUDA", "cuda"),
    ("driver", "driver"),
    ("commit", "commit"),
    ("date (UTC)", "date_utc"),
    ("suite wall time (s)", "suite_wall_s"),
    ("runs merged", "merged_runs"),
)


def _env_value(env: Environment, attr: str) -> str:
    value = getattr(env, attr)
    if attr == "commit" and value:
        value = value[:12] + (" (dirty)" if env.commit_dirty else "")
    if attr == "suite_wall_s" and value is not None:
        value = f"{value:.0f}"
    if attr == "merged_runs":
        value = len(value) or None
    return str(value) if value not in (None, "") else DASH


def environment_section(env: Environment, baseline: Environment | None) -> list[str]:
    header = ["", "this run"] + (["baseline"] if baseline else [])
    rows = [
        [label, _env_value(env, attr)] + ([_env_value(baseline, attr)] if baseline else [])
        for label, attr in ENV_ROWS
    ]
    lines = ["## Environment", "", *table(header, rows), ""]
    if env.negative_controls:
        lines += [f"Negative controls in this run: {', '.join(env.negative_controls)}", ""]
    return lines


def measurements_section(run: RunRecord) -> list[str]:
    """What this run measured, whatever the gate made of it."""
    rows = [
        [code(c.name), fmt_ms(c.median_ms), fmt_ms(c.iqr_ms), fmt_ms(c.min_ms), str(c.rounds),
         fmt_gib(c.peak_mem_gib), fmt_gib(c.working_mem_gib)]
        for c in run.cases
    ]
    header = ["benchmark", "median ms", "IQR ms", "min ms", "rounds", "peak GiB", "working GiB"]
    return ["## Measurements", "", *table(header, rows), ""]


def gpu_section(run: RunRecord, gate: GateReport) -> list[str]:
    """What the GPU was doing around each case's timed rounds (NVML; absent without it)."""
    notes = {c.name: c.gpu_note for c in gate.comparisons if c.gpu_note}
    rows = [[code(c.name), *gpu_cells(telemetry.case_readings(c)), notes.get(c.name, "")]
            for c in run.cases if telemetry.case_readings(c)]
    if not rows:
        return []
    explain = ("NVML readings just before the first and just after the last timed round of each case. A latency "
               f"regression whose mean SM clock differs from the baseline's by more than "
               f"{telemetry.SM_CLOCK_LIMIT:.0%}, or that ran throttled, still fails, with a note that the GPU may "
               "explain it: rerun to tell the code from the node.")
    return ["## GPU state", "", explain, "",
            *table(["benchmark", "SM MHz", "max C", "throttled", "note"], rows), ""]


def rule_sections(gate: GateReport) -> list[str]:
    """One table per gate rule that found something, in the rules' order."""
    lines: list[str] = []
    for rule in RULES:
        findings = gate.of(rule.name)
        if findings:
            lines += [f"## {rule.title}", "", *table(rule.columns, (f.row for f in findings)), ""]
        if rule.name == "latency":
            lines += _noise_paragraph(gate)
    return lines


def _noise_paragraph(gate: GateReport) -> list[str]:
    noisy = [c for c in gate.comparisons if c.allowed > c.threshold]
    if not noisy:
        return []
    runs = len(gate.baseline_environment.merged_runs)
    return [
        (f"The baseline merges {runs} runs. Where their medians varied from run to run, a slowdown must "
         f"also exceed {gate.config.noise_k:g} run-to-run standard deviations: {len(noisy)} benchmark(s) "
         "here allow more than the threshold, so a smaller slowdown of those cannot be told from noise "
         "on this machine."),
        "",
    ]


def _e2e_groups(run: RunRecord) -> dict[tuple[str, int], list[CaseResult]]:
    groups: dict[tuple[str, int], list[CaseResult]] = {}
    for case in run.cases:
        if case.spec.benchmark == Kind.E2E and case.stage_samples_ms:
            groups.setdefault((case.spec.resolution, case.spec.num_frames), []).append(case)
    return groups


def e2e_section(run: RunRecord, gate: GateReport) -> list[str]:
    lines: list[str] = []
    for (resolution, frames), cases in _e2e_groups(run).items():
        stages = list(dict.fromkeys(stage for case in cases for stage in case.stage_samples_ms))
        by_strategy = {case.spec.strategy: case for case in cases}
        # A change column only where the two strategies are there to compare.
        pair = (by_strategy.get("expand"), by_strategy.get("single_frame"))
        compare = all(pair)
        header = ["stage"] + [f"{case.spec.strategy or 'e2e'} ms (share)" for case in cases] + (
            ["single_frame vs expand"] if compare else []
        )
        rows = []
        for stage in stages:
            cells = [_stage_cell(case, case.stage_median_ms.get(stage)) for case in cases]
            if compare:
                old, new = (c.stage_median_ms.get(stage) for c in pair)
                cells.append(fmt_change(new / old) if old and new is not None else DASH)
            rows.append([stage, *cells])
        total = [f"{fmt_ms(case.median_ms)} (100%)" for case in cases]
        if compare:
            total.append(fmt_change(pair[1].median_ms / pair[0].median_ms))
        rows.append(["**total**", *total])
        lines += [f"## End to end, {resolution}, {frames} frames: per-stage medians", "", *table(header, rows), ""]
        for s in gate.speedups:
            if s.benchmark == Kind.E2E and (s.resolution, s.num_frames) == (resolution, frames):
                lines += [f"End-to-end reduction from {s.new} over {s.old}: {s.reduction:.1%} ({s.factor:.3f}x).", ""]
    if lines:
        lines += ["Shares are each stage's median over the median total; the medians need not add up.", ""]
    return lines


def upstream_section(run: RunRecord) -> list[str]:
    """The upstream change's table beside this run's e2e figures at the same size, where it has them."""
    spec = {"width": upstream.WIDTH, "height": upstream.HEIGHT, "num_frames": upstream.NUM_FRAMES}
    ours = {c.spec.strategy: c for c in run.cases if c.spec.benchmark == Kind.E2E
            and (c.spec.width, c.spec.height, c.spec.num_frames) == tuple(spec.values())}
    if not {"expand", "single_frame"} <= ours.keys():
        return []
    medians = {k: {**c.stage_median_ms, "total": c.median_ms} for k, c in ours.items()}
    rows = []
    for row in upstream.TABLE:
        old, new = medians["expand"].get(row.stage), medians["single_frame"].get(row.stage)
        rows.append([
            row.stage, fmt_ms(row.expand_ms), fmt_ms(row.single_frame_ms), fmt_change(row.single_frame_ms / row.expand_ms),
            fmt_ms(old), fmt_ms(new), fmt_change(new / old) if old and new is not None else DASH,
            row.corresponds,
        ])
    header = ["stage", "upstream expand ms", "upstream single_frame ms", "upstream change",
              "this run expand ms", "this run single_frame ms", "this run change", "which figure is upstream's"]
    return [f"## The upstream table ({upstream.WIDTH}x{upstream.HEIGHT}, {upstream.NUM_FRAMES} frames)", "",
            f"Upstream: {upstream.SOURCE}. What differs:", "", *(f"- {d}" for d in upstream.DIFFERENCES), "",
            *table(header, rows), ""]




def _equivalence_cell(case: CaseResult | None) -> str:
    eq = case.equivalence if case is not None else None
    if eq is None:
        return "not checked"
    if eq.bitwise:
        return f"bitwise (against {eq.reference})"
    if eq.equivalent:
        return f"within tolerance (max rel err {eq.max_rel_err:.3g})"
    return f"DIFFERENT (max abs err {eq.max_abs_err:.3g}, max rel err {eq.max_rel_err:.3g})"


def diffusers_section(run: RunRecord, gate: GateReport) -> list[str]:
    """diffusers' own I2V latent preparation, as shipped and with the single-frame encode, per size: what a user
    of diffusers pays today and what the one-call patch saves, with its equivalence on diffusers' outputs."""
    groups: dict[tuple[str, int], dict[str, CaseResult]] = {}
    for case in run.cases:
        if case.spec.benchmark == Kind.DIFFUSERS_PREPARE_LATENTS and case.spec.strategy:
            groups.setdefault((case.spec.resolution, case.spec.num_frames), {})[case.spec.strategy] = case
    calls = [c for c in run.cases if c.spec.benchmark == Kind.DIFFUSERS_E2E and c.stage_samples_ms]
    if not groups and not calls:
        return []
    lines = [DIFFUSERS_HEADING, "", *_diffusers_latent_prep_lines(run, gate, groups), *diffusers_e2e_lines(calls, groups),
             ("The cross-check of diffusers' preprocessing and latents against this package's, with the cause of "
              "each difference: `python tools/diffusers_crosscheck.py` (bench/measure/crosscheck.py)."), ""]
    return lines


def _diffusers_latent_prep_lines(run: RunRecord, gate: GateReport,
                                 groups: dict[tuple[str, int], dict[str, CaseResult]]) -> list[str]:
    if not groups:
        return []
    checks = {(s.resolution, s.num_frames): s for s in gate.speedups
              if s.benchmark == Kind.DIFFUSERS_PREPARE_LATENTS and (s.new, s.old) == ("single_frame", "shipped")}
    rows = []
    for (resolution, frames), ways in groups.items():
        shipped, single = ways.get("shipped"), ways.get("single_frame")
        check = checks.get((resolution, frames))
        factor = f"{check.factor:.2f}x" if check else DASH
        saved = f"{fmt_ms(check.old_median_ms - check.new_median_ms)} ms ({check.reduction:.1%})" if check else DASH
        if check is None:
            verdict = DASH
        elif check.min_factor is None:
            verdict = "reported, not gated"
        else:
            verdict = f"{'pass' if check.passed else 'FAIL'} (>= {check.min_factor:.2f}x)"
        rows.append([resolution, str(frames), fmt_ms(shipped.median_ms if shipped else None),
                     fmt_ms(single.median_ms if single else None), factor, saved, _equivalence_cell(single), verdict])
    env = run.environment
    lines = [
        (f"Image-to-video latent preparation in diffusers {env.diffusers}'s own `Cosmos3OmniPipeline.prepare_latents` "
         "(its preprocessing of the image, the video, the VAE encode, the noise and the mix, in the float32 its "
         "`__call__` passes), on this run's VAE. **As shipped** it builds a video of every frame, repeats the image "
         "into all of them, VAE-encodes the whole video and keeps latent frame 0 alone (`vision_condition_mask[0] = "
         "1`). **Single frame** is the same method with one call patched (`cosmos3/diffusers_omni.py`, "
         "`encode_patch`): `_encode_video` is handed pixel frame 0 alone, and its latent is put in latent frame 0; "
         "the rest of diffusers' logic runs unchanged. The equivalence compares latent frame 0, the whole "
         "returned latent and the condition mask with the shipped way's, on the same image, size and seed."),
        "",
        *table(["size", "frames", "shipped ms", "single_frame ms", "factor", "time saved", "equivalence",
                "in-run check"], rows),
        "",
    ]
    if any("reverted" in control for control in env.negative_controls):
        lines += [("This run reverted the patch (a negative control): the single_frame cases ran prepare_latents "
                   "as shipped, so the factor above is the one the in-run check must fail on."), ""]
    return lines


def diffusers_e2e_lines(calls: list[CaseResult], groups: dict[tuple[str, int], dict[str, CaseResult]]) -> list[str]:
    """A whole request through diffusers' `__call__`, split per stage, and the share of it that the shipped
    latent preparation takes and the single-frame encode would save (from the prepare_latents cases)."""
    if not calls:
        return [("Its share of a whole request through diffusers' `__call__` was not measured in this run (no "
                 "`diffusers_e2e` case selected)."), ""]
    lines: list[str] = []
    for case in calls:
        rows = [[stage, _stage_cell(case, ms)] for stage, ms in case.stage_median_ms.items()]
        rows.append(["**total**", f"{fmt_ms(case.median_ms)} (100%)"])
        steps = f", {case.num_inference_steps} steps" if case.num_inference_steps else ""
        lines += [(f"A whole request through `__call__` as shipped, {case.spec.resolution}, {case.spec.num_frames} "
                   f"frames{steps} (`{case.name}`): prompt (tokenising and text segments), "
                   "`prepare_latents`, the denoise loop, and the VAE decode with diffusers' postprocessing, each "
                   "timed with the device synchronised at its boundaries; a local tokenizer, this run's weights, the safety "
                   "checker off (it needs cosmos_guardrail and checks decoded frames only). Medians; shares of the "
                   "median total."),
                  "", *table(["stage", "ms (share)"], rows), ""]
        ways = groups.get((case.spec.resolution, case.spec.num_frames), {})
        prep = case.stage_median_ms.get("latent_preparation")
        shipped, single = ways.get("shipped"), ways.get("single_frame")
        if prep is not None and shipped is not None and single is not None:
            saved = shipped.median_ms - single.median_ms
            lines += [(f"Latent preparation as shipped is {fmt_share(prep, case.median_ms)} of this request. "
                       f"The single-frame encode saves {fmt_ms(saved)} ms of it at this size and frame count "
                       f"(`{shipped.name}` {fmt_ms(shipped.median_ms)} ms against `{single.name}` "
                       f"{fmt_ms(single.median_ms)} ms), {fmt_share(saved, case.median_ms)} of the request: an "
                       "estimate from the stage cases, not a measured patched request."), ""]
        else:
            lines += [("No `diffusers_prepare_latents` pair at this size and frame count in this run, so the "
                       "single-frame encode's share of the request is not estimated."), ""]
    return lines


def _stage_cell(case: CaseResult, ms: float | None) -> str:
    return DASH if ms is None else f"{fmt_ms(ms)} ({fmt_share(ms, case.median_ms)})"


def notes_section(gate: GateReport) -> list[str]:
    return ["## Notes", "", *(f"- {n}" for n in gate.notes), ""] if gate.notes else []


def plots_section(plots: Sequence[str]) -> list[str]:
    return ["## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""] if plots else []


def render_summary(run: RunRecord, gate: GateReport, plots: Sequence[str] = ()) -> str:
    sections = [
        verdict_section(gate),
        environment_section(run.environment, gate.baseline_environment),
        measurements_section(run),
        rule_sections(gate),
        gpu_section(run, gate),
        e2e_section(run, gate),
        upstream_section(run),
        diffusers_section(run, gate),
        notes_section(gate),
        plots_section(plots),
    ]
    return "\n".join(line for section in sections for line in section)


# ---- plots: each returns False, writing nothing, when its data is absent -------------------------


def _save(fig: plt.Figure, path: Path) -> bool:
    for ax in fig.axes:
        if ax.get_yscale() == "log":
            # Plain 1-2-5 labels ("20", "50") read faster than matplotlib's default 2x10^1.
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return True


def _frame_series(run: RunRecord, kind: str) -> dict[tuple[str, str], list[CaseResult]]:
    """(strategy, resolution) -> the kind's cases sorted by frames."""
    series: dict[tuple[str, str], list[CaseResult]] = {}
    for case in run.cases:
        if case.spec.benchmark == kind:
            series.setdefault((case.spec.strategy or "", case.spec.resolution), []).append(case)
    return {key: sorted(cases, key=lambda c: c.spec.num_frames) for key, cases in series.items()}


def _panels(titled: dict[str, T]) -> tuple[plt.Figure, list[tuple[plt.Axes, str, T]]]:
    """One figure, one panel per plotted kind that has data (side by side), in the registry's order."""
    fig, axes = plt.subplots(1, len(titled), figsize=(7 * len(titled), 4.5), squeeze=False)
    return fig, [(ax, title, data) for ax, (title, data) in zip(axes[0], titled.items(), strict=True)]


def _plotted(run: RunRecord, keep: Callable[[CaseResult], bool] = lambda c: True
             ) -> dict[str, dict[tuple[str, str], list[CaseResult]]]:
    """Plot title -> (strategy, resolution) -> cases, for each kind the registry plots against frames
    (bench.core.cases.KINDS' plot_title) that has cases `keep` accepts."""
    out = {}
    for kind, entry in KINDS.items():
        series = {key: kept for key, cases in _frame_series(run, kind).items() if (kept := [c for c in cases if keep(c)])}
        if entry.plot_title is not None and series:
            out[entry.plot_title] = series
    return out


def plot_latency_vs_frames(run: RunRecord, gate: GateReport, path: Path) -> bool:
    plotted = _plotted(run)
    if not plotted:
        return False
    fig, panels = _panels(plotted)
    for ax, title, series in panels:
        for (strategy, resolution), cases in series.items():
            frames = [c.spec.num_frames for c in cases]
            medians = [c.median_ms for c in cases]
            err = [[c.median_ms - c.q1_ms for c in cases], [c.q3_ms - c.median_ms for c in cases]]
            ax.errorbar(frames, medians, yerr=err, marker="o", capsize=3, label=f"{strategy} {resolution}")
        ax.set(xlabel="frames", ylabel="median ms (bars: IQR)", yscale="log", title=f"{title} latency")
        ax.legend()
    return _save(fig, path)


def plot_speedup_vs_frames(run: RunRecord, gate: GateReport, path: Path) -> bool:
    """Each optimised strategy's factor over the one it replaced (every pair the kind runs: single_frame over
    expand, first_frame_2d over single_frame), per resolution, with the factor it must show where it is gated."""
    plotted: dict[str, list[SpeedupCheck]] = {}
    for kind, entry in KINDS.items():  # panels in the registry's order, as in the other plots
        checks = [s for s in gate.speedups if s.benchmark == kind]
        if entry.plot_title is not None and checks:
            plotted[entry.plot_title] = checks
    if not plotted:
        return False
    fig, panels = _panels(plotted)
    for ax, title, checks in panels:
        pairs = list(dict.fromkeys((s.new, s.old) for s in checks))
        for new, old in pairs:
            of_pair = [s for s in checks if (s.new, s.old) == (new, old)]
            for resolution in dict.fromkeys(s.resolution for s in of_pair):
                points = sorted((s.num_frames, s.factor) for s in of_pair if s.resolution == resolution)
                ax.plot(*zip(*points), marker="o", label=resolution if len(pairs) == 1 else f"{new} {resolution}")
            for required in sorted({s.min_factor for s in of_pair if s.min_factor is not None}):
                label = f"required {required:g}x" if len(pairs) == 1 else f"{new} required {required:g}x"
                ax.axhline(required, color="red", linestyle="--", label=label)
        ylabel = f"{pairs[0][1]} / {pairs[0][0]} (median)" if len(pairs) == 1 else "old / new strategy (median)"
        ax.set(xlabel="frames", ylabel=ylabel, yscale="log", title=f"{title} speedup")
        ax.legend()
    return _save(fig, path)


def plot_peak_memory_vs_frames(run: RunRecord, gate: GateReport, path: Path) -> bool:
    plotted = _plotted(run, keep=lambda c: c.peak_mem_gib is not None)
    if not plotted:
        return False
    fig, panels = _panels(plotted)
    for ax, title, series in panels:
        for (strategy, resolution), cases in series.items():
            ax.plot([c.spec.num_frames for c in cases], [c.peak_mem_gib for c in cases], marker="o",
                    label=f"{strategy} {resolution}")
        ax.set(xlabel="frames", ylabel="peak GiB", title=f"{title} peak memory")
        ax.legend()
    return _save(fig, path)


def plot_baseline_ratio(run: RunRecord, gate: GateReport, path: Path) -> bool:
    comps = [c for c in gate.comparisons if math.isfinite(c.ratio)]
    if not comps:
        return False
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.35 * len(comps)))
    ys = range(len(comps))
    # max(0, ...): a percentile interval need not contain the point estimate, and error bars cannot be negative.
    low = [max(0.0, c.ratio - c.ci_low) if c.ci_low is not None else 0.0 for c in comps]
    high = [max(0.0, c.ci_high - c.ratio) if c.ci_high is not None else 0.0 for c in comps]
    colors = ["tab:red" if c.failure else "tab:green" if c.verdict == "faster" else "tab:gray" for c in comps]
    # Bars start at 1 so that their length is the change, not the ratio.
    ax.barh(ys, [c.ratio - 1 for c in comps], left=1, xerr=[low, high], color=colors, capsize=3)
    ax.axvline(1, color="black", linewidth=1)
    # Each benchmark's own limit: the threshold, widened where the baseline saw run-to-run noise.
    ax.scatter([1 + c.allowed for c in comps], list(ys), marker="|", s=300, color="red", zorder=3,
               label="allowed slowdown")
    ax.set_yticks(list(ys), [c.name for c in comps], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"median / baseline median ({CI_LEVEL:.0%} CI)", title="Change against the baseline")
    ax.legend(loc="lower right")
    return _save(fig, path)


PLOTS: dict[str, Plot] = {
    "latency_vs_frames.png": plot_latency_vs_frames,
    "speedup_vs_frames.png": plot_speedup_vs_frames,
    "peak_memory_vs_frames.png": plot_peak_memory_vs_frames,
    "baseline_ratio.png": plot_baseline_ratio,
}


def write_report(run: RunRecord, gate: GateReport, out_dir: Path) -> Path:
    """Write summary.md and the plots whose data exists into the new folder `out_dir`; return the summary.

    All or nothing: the files are written into a hidden sibling folder that is renamed to `out_dir`
    only when every one is complete, so a crash never leaves a summary that disagrees with its plots.
    An existing `out_dir` is never written into: a report is evidence, and evidence is never edited.
    """
    with new_folder(out_dir) as staging:
        written = [name for name, plot in PLOTS.items() if plot(run, gate, staging / name)]
        (staging / SUMMARY_NAME).write_text(render_summary(run, gate, written))
    return Path(out_dir) / SUMMARY_NAME


def append_github_summary(summary_path: Path) -> bool:
    """Append summary.md to the GitHub Actions job summary when running there; return whether it did."""
    target = os.environ.get(GITHUB_SUMMARY_ENV)
    if not target:
        return False
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(Path(summary_path).read_text() + "\n")
    return True
