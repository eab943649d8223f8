"""summary.md and the plots, from synthetic records; with and without a baseline or memory data."""

from __future__ import annotations

import pytest

from bench.core.fmt import fmt_change, fmt_ms, fmt_p
from bench.gate import report
from bench.gate.report import append_github_summary, write_report
from bench.gate.rules import GateConfig, evaluate
from cosmos3.errors import InputError
from tests.conftest import equivalence

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = ("preprocess", "latent_preparation", "timestep_preparation", "denoising", "decoding")


def full_run(make_case, make_run, *, slower: float = 1.0, memory: bool = True, seed: int = 0):
    cases = []
    for width, height in ((1280, 720), (832, 480)):
        for frames in (33, 81):
            for strategy, ms, gib in (("single_frame", 20.0, 1.1), ("expand", 20.0 * frames, 4.0)):
                cases.append(make_case(
                    strategy=strategy, width=width, height=height, num_frames=frames, median_ms=ms * slower,
                    peak_mem_gib=gib if memory else None, seed=seed,
                    equivalence=equivalence() if strategy == "single_frame" else None,
                ))
    for strategy, prep in (("single_frame", 340.0), ("expand", 1180.0)):
        stage_ms = dict(zip(STAGES, (5.0, prep, 1.0, 25_500.0, 1790.0)))
        stages = {k: tuple(make_case(median_ms=v, rounds=5, seed=seed).samples_ms) for k, v in stage_ms.items()}
        cases.append(make_case("e2e", strategy, median_ms=sum(stage_ms.values()), rounds=5, seed=seed,
                               stage_samples_ms=stages))
    return make_run(cases)


def test_report_with_baseline(tmp_path, make_case, make_run):
    out = tmp_path / "report"
    baseline = full_run(make_case, make_run)
    run = full_run(make_case, make_run, slower=1.2, seed=1)
    gate = evaluate(run, baseline, GateConfig())
    summary = write_report(run, gate, out)
    text = summary.read_text()
    assert summary == out / "summary.md"
    assert text.startswith("# cosmos3-bench: FAIL")
    for case in run.cases:
        assert f"`{case.name}`" in text
    assert "regression" in text and "NVIDIA H100 80GB HBM3" in text
    assert "| denoising |" in text and "End-to-end reduction from single_frame" in text
    for plot in ("latency_vs_frames", "speedup_vs_frames", "peak_memory_vs_frames", "baseline_ratio"):
        path = out / f"{plot}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert f"({plot}.png)" in text


def test_report_without_baseline_or_memory(tmp_path, make_case, make_run):
    out = tmp_path / "report"
    run = full_run(make_case, make_run, memory=False)
    gate = evaluate(run, None, GateConfig())
    text = write_report(run, gate, out).read_text()
    assert text.startswith("# cosmos3-bench: PASS")
    assert "no baseline: latency and memory not gated" in text
    assert (out / "latency_vs_frames.png").exists() and (out / "speedup_vs_frames.png").exists()
    assert not (out / "baseline_ratio.png").exists()
    assert not (out / "peak_memory_vs_frames.png").exists()


def test_report_of_a_single_case_has_no_speedup_plot(tmp_path, make_case, make_run):
    run = make_run([make_case("vae_encode", None)])
    gate = evaluate(run, run, GateConfig())
    text = write_report(run, gate, tmp_path / "nested").read_text()
    assert "`vae_encode[1280x720-81f]`" in text
    assert sorted(p.name for p in (tmp_path / "nested").iterdir()) == ["baseline_ratio.png", "summary.md"]


def test_github_step_summary(tmp_path, monkeypatch, make_case, make_run):
    out = tmp_path / "report"
    run = make_run([make_case()])
    summary = write_report(run, evaluate(run, None, GateConfig()), out)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert append_github_summary(summary) is False
    target = tmp_path / "step_summary.md"
    target.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    assert append_github_summary(summary) is True
    assert target.read_text() == "earlier step\n" + summary.read_text() + "\n"


@pytest.mark.parametrize(("ms", "text"), [(1.234, "1.23"), (99.999, "100.0"), (1176.62, "1176.6"), (28998.6, "28999")])
def test_fmt_ms(ms, text):
    assert fmt_ms(ms) == text


def test_small_formatters():
    assert fmt_ms(None) == "—"
    assert fmt_change(1.1) == "+10.0%" and fmt_change(0.9) == "-10.0%"
    assert fmt_p(0.0123) == "0.012" and fmt_p(1.5e-6) == "1.5e-06"


def test_a_report_never_writes_into_an_existing_folder(tmp_path, make_case, make_run):
    run = make_run([make_case()])
    gate = evaluate(run, None, GateConfig())
    (tmp_path / "report").mkdir()
    with pytest.raises(InputError, match="report_dir: exists; a report is never overwritten"):
        write_report(run, gate, tmp_path / "report")
    assert list((tmp_path / "report").iterdir()) == []


def test_a_report_is_all_or_nothing(tmp_path, make_case, make_run, monkeypatch):
    """A plot that crashes part way leaves no folder at all, and no staging folder either."""
    run = make_run([make_case(), make_case(strategy="expand", median_ms=100.0)])
    gate = evaluate(run, None, GateConfig())

    def broken(*_):
        raise RuntimeError("disk full")

    monkeypatch.setitem(report.PLOTS, "speedup_vs_frames.png", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(run, gate, tmp_path / "report")
    assert list(tmp_path.iterdir()) == []


def test_each_kind_the_registry_plots_has_its_panel(tmp_path, make_case, make_run, monkeypatch):
    """The frame plots read the registry (bench.core.cases.KINDS, plot_title): ours and diffusers' latent
    preparation get a panel each, vae_encode (no title) none; a kind whose title is taken away loses its panel."""
    import dataclasses

    from bench.core.cases import KINDS
    from bench.core.kinds import Kind

    cases = [make_case(kind, strategy, num_frames=n, median_ms=ms * n, peak_mem_gib=1.0)
             for kind, old in ((Kind.LATENT_PREP, "expand"), (Kind.DIFFUSERS_PREPARE_LATENTS, "shipped"))
             for strategy, ms in (("single_frame", 0.1), (old, 1.0)) for n in (33, 81)]
    run = make_run([*cases, make_case(Kind.VAE_ENCODE, None, peak_mem_gib=1.0)])
    titles: dict[str, list[str]] = {}

    def keep_titles(fig, path):
        titles[path.name] = [ax.get_title() for ax in fig.axes]
        return True

    monkeypatch.setattr(report, "_save", keep_titles)
    write_report(run, evaluate(run, None, GateConfig()), tmp_path / "both")
    for plot, what in (("latency_vs_frames", "latency"), ("speedup_vs_frames", "speedup"),
                       ("peak_memory_vs_frames", "peak memory")):
        assert titles[f"{plot}.png"] == [f"Latent preparation {what}", f"diffusers prepare_latents {what}"]

    monkeypatch.setitem(KINDS, Kind.DIFFUSERS_PREPARE_LATENTS,
                        dataclasses.replace(KINDS[Kind.DIFFUSERS_PREPARE_LATENTS], plot_title=None))
    write_report(run, evaluate(run, None, GateConfig()), tmp_path / "ours")
    assert titles["latency_vs_frames.png"] == ["Latent preparation latency"]
    assert titles["speedup_vs_frames.png"] == ["Latent preparation speedup"]
