"""End-to-end fidelity: the stage-consistency flag, the upstream table and the e2e equivalence check."""

from __future__ import annotations

import gc
import importlib.util
import json
import sys

import pytest

from bench.core.cases import e2e_cases, grid_for
from bench.gate.report import render_summary
from bench.gate.rules import GateConfig, evaluate
from cosmos3.errors import InputError
from cosmos3.stages import Cosmos3LatentPreparationStage
from tests.conftest import equivalence
from tests.repo import REPO

STAGES = ("preprocess", "latent_preparation", "timestep_preparation", "denoising", "decoding")


def e2e(make_case, strategy, *, latent_ms, width=1280, height=720, seed=0, total=11000.0):
    stages = {"preprocess": 100.0, "latent_preparation": latent_ms, "timestep_preparation": 1.0,
              "denoising": total - 4400.0 - latent_ms, "decoding": 4300.0}
    samples = {k: tuple(make_case(median_ms=v, rounds=5, seed=seed + i).samples_ms) for i, (k, v) in enumerate(stages.items())}
    return make_case("e2e", strategy, width=width, height=height, median_ms=total, rounds=5, seed=seed,
                     stage_samples_ms=samples)


def test_the_flag_fires_on_todays_figures_and_not_after_the_fix(make_case, make_run):
    """results/example: e2e latent preparation 67.7 ms against 24.5 ms for the stage alone."""
    stage = make_case("latent_prep", "single_frame", median_ms=24.5)
    today = evaluate(make_run([stage, e2e(make_case, "single_frame", latent_ms=67.7)]), None, GateConfig())
    (finding,) = today.of("stage_consistency")
    assert finding.verdict == "inconsistent" and today.passed  # flagged in the report, not a gate failure
    assert "latent_preparation takes 67.9" in next(n for n in today.notes if "pipeline pays" in n)
    fixed = evaluate(make_run([stage, e2e(make_case, "single_frame", latent_ms=27.0)]), None, GateConfig())
    assert fixed.of("stage_consistency")[0].verdict == "ok"  # within max(15%, 5 ms)


def test_the_flag_uses_the_larger_of_15_percent_and_5_ms(make_case, make_run):
    expand = make_case("latent_prep", "expand", median_ms=1329.0)
    inside = evaluate(make_run([expand, e2e(make_case, "expand", latent_ms=1329.0 * 1.14)]), None, GateConfig())
    outside = evaluate(make_run([expand, e2e(make_case, "expand", latent_ms=1329.0 * 1.16)]), None, GateConfig())
    assert inside.of("stage_consistency")[0].verdict == "ok"
    assert outside.of("stage_consistency")[0].verdict == "inconsistent"


def test_the_upstream_table_is_shown_beside_our_figures(make_case, make_run):
    run = make_run([e2e(make_case, "expand", latent_ms=600.0, width=832, height=480, total=6000.0),
                    e2e(make_case, "single_frame", latent_ms=15.0, width=832, height=480, total=5400.0, seed=3)])
    text = render_summary(run, evaluate(run, None, GateConfig()))
    assert "## The upstream table (832x480, 81 frames)" in text
    assert "| latent_preparation | 1176.6 | 342.1 | -70.9% |" in text
    assert "| total | 28999 | 27528 | -5.1% |" in text
    assert "stage timers synchronised" in text and "random weights" in text
    assert "| which figure is upstream's |" in text
    (latent_row,) = [line for line in text.splitlines() if line.startswith("| latent_preparation | 1176.6 |")]
    assert latent_row.endswith("compare with `python -m cosmos3 --stage-timer host` |")


def test_the_upstream_grid_adds_the_upstream_size():
    assert [c.name for c in e2e_cases("wan22")] == ["e2e[single_frame-1280x720-81f]", "e2e[expand-1280x720-81f]"]
    names = [c.name for c in e2e_cases("wan22", "extended")]
    assert "e2e[single_frame-832x480-81f]" in names and "e2e[expand-832x480-81f]" in names
    assert "e2e[first_frame_2d-1280x720-81f]" in names and len(names) == 6
    assert grid_for("wan22", "extended").e2e_steps == 35
    with pytest.raises(InputError, match="grid: must be one of"):
        grid_for("wan22", "huge")


def test_e2e_equivalence_failure_fails_the_gate(make_case, make_run):
    bad = equivalence(equivalent=False, bitwise=False, err=0.3)
    case = e2e(make_case, "single_frame", latent_ms=20.0)
    import dataclasses

    report = evaluate(make_run([dataclasses.replace(case, equivalence=bad)]), None, GateConfig())
    assert report.failures and report.failures[0].startswith("e2e[single_frame-1280x720-81f]: outputs differ")


def test_the_stage_tool_names_a_collection_inside_latent_preparation(tmp_path, monkeypatch):
    """tools/e2e_stage_counters.py on the tiny preset: one row per e2e stage and the stage alone, and a
    garbage collection planted inside latent preparation is counted there, with its time."""
    spec = importlib.util.spec_from_file_location("e2e_stage_counters", REPO / "tools" / "e2e_stage_counters.py")
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, tool)
    spec.loader.exec_module(tool)
    forward = Cosmos3LatentPreparationStage.forward

    def collecting(self, req):
        gc.collect()
        return forward(self, req)

    monkeypatch.setattr(Cosmos3LatentPreparationStage, "forward", collecting)
    out = tmp_path / "stages.json"
    assert tool.main(["--preset", "tiny", "--height", "32", "--width", "48", "--num-frames", "5", "--steps", "2",
                      "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert list(table) == [f"e2e {stage}" for stage in STAGES] + ["latent_preparation alone"]
    for name in ("e2e latent_preparation", "latent_preparation alone"):
        assert table[name]["gc_collections"] >= 1 and table[name]["gc_ms"] > 0, table[name]
    assert table["e2e latent_preparation"]["kernels"] == table["latent_preparation alone"]["kernels"] > 0
