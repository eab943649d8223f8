"""diffusers' Cosmos3OmniPipeline as a benchmark kind: diffusers_prepare_latents, both ways over the latent_prep grid,
its equivalence record (and the negative control that fails it), the in-run speedup check and its revert, the
report section. The run through `python -m bench` is one module fixture (two child runs, the `slow` tests)."""

from __future__ import annotations

import time

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("transformers")  # the pipeline module imports it (the dev extra installs it)

from bench.cli.main import main
from bench.core import cases
from bench.core.fmt import DIFFUSERS_HEADING
from bench.core.records import CaseSpec, EquivalenceRecord, load_run
from bench.gate.report import diffusers_section
from bench.gate.rules import GateConfig, evaluate
from bench.measure import harness, workloads
from bench.measure.harness import RunControls
from cosmos3 import diffusers_omni as omni
from cosmos3 import equivalence
from cosmos3.presets import get_preset

CPU = torch.device("cpu")
KIND = "diffusers_prepare_latents"


# ---- the cases: named by the implementation, over ours' grid --------------------------------------------


def test_minus_k_diffusers_selects_both_ways_over_the_latent_prep_grid():
    chosen = cases.chosen("tiny", "default", "diffusers", [])
    assert [s.name for s in chosen][:2] == [f"{KIND}[single_frame-96x64-9f]", f"{KIND}[shipped-96x64-9f]"]
    assert {s.benchmark for s in chosen} == {KIND, "diffusers_e2e"} and len(chosen) == 13  # and one request
    ours = {(s.width, s.height, s.num_frames) for s in cases.latent_prep_cases("wan22")}
    theirs = cases.diffusers_prepare_latents_cases("wan22")
    assert {(s.width, s.height, s.num_frames) for s in theirs} == ours
    assert f"{KIND}[single_frame-1280x720-81f]" in {s.name for s in theirs}
    assert f"{KIND}[shipped-832x480-121f]" in {s.name for s in theirs}
    # Ours stay selectable alone, by -k and by --case.
    assert all(s.benchmark == "latent_prep" for s in cases.chosen("tiny", "default", "test_latent_prep", []))
    assert all(s.benchmark == "latent_prep" for s in cases.chosen("tiny", "default", None, ["latent_prep[*]"]))
    # The encodes the cases name are the module's, and its tolerance is cosmos3.equivalence's.
    assert set(cases.DIFFUSERS_ENCODES) <= set(omni.ENCODES)
    assert (omni.DEFAULT_ATOL, omni.DEFAULT_RTOL) == (equivalence.DEFAULT_ATOL, equivalence.DEFAULT_RTOL)


# ---- the workload: diffusers' prepare_latents, its encode chosen by the case and the revert --------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return workloads.Models(get_preset("tiny"), CPU, cases.grid_for("tiny"), tmp_path_factory.mktemp("models"))


def test_the_workload_encodes_one_frame_or_all_and_a_revert_runs_the_shipped_way(models, monkeypatch):
    encoded: list[int] = []
    vae = models.vae
    shipped_encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda x, *a, **k: encoded.append(x.shape[2]) or shipped_encode(x, *a, **k))
    spec = CaseSpec(KIND, 64, 48, 9, "single_frame")
    for controls, frames in ((RunControls(), 1), (RunControls(reverted=("single_frame",)), 9)):
        encoded.clear()
        out = workloads.build(spec, models, controls).fn()
        assert encoded == [frames] and out.latents.shape == (1, 48, 3, 3, 4)
    encoded.clear()
    workloads.build(CaseSpec(KIND, 64, 48, 9, "shipped"), models, RunControls(reverted=("single_frame",))).fn()
    assert encoded == [9]
    assert models.diffusers_pipeline.transformer is None and "_encode_video" not in vars(models.diffusers_pipeline)


def test_the_equivalence_record_holds_bitwise_and_its_negative_control_fails_the_gate(models, make_case, make_run):
    pipe, spec = models.diffusers_pipeline, CaseSpec(KIND, 64, 48, 9, "single_frame")
    image = workloads.seeded_pil_image(64, 48)
    kw = {"device": CPU, "dtype": workloads.DIFFUSERS_SAMPLING_DTYPE}
    held = harness.diffusers_equivalence_for(pipe, image, spec, omni.SINGLE_FRAME, **kw)
    assert held == EquivalenceRecord(True, True, 0.0, 0.0, "shipped", "bitwise, else normwise relative error <= 0.0078125")
    wrong = harness.diffusers_equivalence_for(pipe, image, spec, omni.WRONG_FRAME, **kw)
    assert not wrong.equivalent and not wrong.bitwise and wrong.max_rel_err > omni.DEFAULT_RTOL
    assert harness.diffusers_equivalence_for(pipe, image, CaseSpec(KIND, 64, 48, 9, "shipped"), "shipped", **kw) is None
    report = evaluate(make_run([make_case(KIND, "single_frame", equivalence=wrong)]), None, GateConfig())
    assert any(f.startswith(f"{KIND}[single_frame-1280x720-81f]: outputs differ from shipped") for f in report.failures)
    # The image the workload hands diffusers: harness.seeded_image in 8 bits, at the output size.
    assert isinstance(image, PIL.Image.Image) and image.size == (64, 48)
    expected = ((harness.seeded_image(64, 48)[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(image), expected)


# ---- a whole request through diffusers' __call__, split per stage ----------------------------------------

E2E_KIND = "diffusers_e2e"


def test_minus_k_diffusers_selects_one_e2e_request_as_shipped_at_the_e2e_size():
    chosen = [s.name for s in cases.chosen("tiny", "default", "diffusers", [])]
    assert f"{E2E_KIND}[shipped-96x64-17f]" in chosen
    assert [s.name for s in cases.diffusers_e2e_cases("wan22")] == [f"{E2E_KIND}[shipped-1280x720-81f]"]
    assert cases.chosen("tiny", "default", "test_e2e", []) == cases.e2e_cases("tiny")  # ours alone, as before
    assert list(cases.KINDS)[-2:] == ["e2e", E2E_KIND]  # the whole pipelines run last


def timed_request(models, **call):
    spec = CaseSpec(E2E_KIND, 64, 48, 9, "shipped")
    work = workloads.build(spec, models, RunControls())
    if not call:
        return work.fn()
    pipe = models.components.omni
    return omni.timed_call(pipe, device=CPU, prompt=omni.PROMPT, image=workloads.seeded_pil_image(64, 48),
                           num_frames=9, height=48, width=64, num_inference_steps=2, **call)


def test_the_call_is_split_at_prepare_latents_and_decode_and_leaves_the_pipeline_as_it_was(models):
    out = timed_request(models)
    assert tuple(out.stage_ms) == omni.CALL_STAGES == ("prompt", "latent_preparation", "denoising", "decoding")
    assert all(ms > 0 for ms in out.stage_ms.values())
    assert sum(out.stage_ms.values()) == pytest.approx(out.total_ms, rel=1e-9)  # contiguous: nothing between them
    assert out.output.video.shape == (9, 3, 48, 64)  # frames on the device, as output_type="pt" leaves them
    pipe = models.components.omni
    assert "prepare_latents" not in vars(pipe) and "decode" not in vars(pipe.vae) and "_encode_video" not in vars(pipe)


def test_a_stage_s_time_is_charged_to_that_stage(models, monkeypatch):
    """The control: one second slept inside prepare_latents shows in latent_preparation, not in the others.
    Both requests run warm (a first request pays for lazy set-up), and 100 ms are left for the noise of a
    loaded 2-core host: unslept, the stage grows by about nothing."""
    timed_request(models)
    base = timed_request(models)
    cls = type(models.components.omni)
    shipped = cls.prepare_latents
    monkeypatch.setattr(cls, "prepare_latents", lambda self, *a, **k: (time.sleep(1.0), shipped(self, *a, **k))[1])
    slowed = timed_request(models)
    grew = {stage: slowed.stage_ms[stage] - base.stage_ms[stage] for stage in omni.CALL_STAGES}
    assert grew["latent_preparation"] >= 900, grew
    assert sum(ms for stage, ms in grew.items() if stage != "latent_preparation") < 500, grew


def test_a_call_that_never_decodes_cannot_be_split(models):
    """output_type="latent" skips vae.decode: the split says so rather than report decoding as free."""
    with pytest.raises(RuntimeError, match="never reached decoding"):
        timed_request(models, output_type="latent")
    pipe = models.components.omni
    assert "prepare_latents" not in vars(pipe) and "decode" not in vars(pipe.vae)


def test_the_report_gives_the_request_s_split_and_the_share_the_single_frame_encode_saves(make_case, make_run):
    stages = {"prompt": (2.0,), "latent_preparation": (1500.0,), "denoising": (8000.0,), "decoding": (498.0,)}
    call = make_case(E2E_KIND, "shipped", median_ms=10000.0, noise=0.0, stage_samples_ms=stages)
    run = make_run([make_case(KIND, "single_frame", median_ms=25.0, noise=0.0),
                    make_case(KIND, "shipped", median_ms=1500.0, noise=0.0), call])
    text = "\n".join(diffusers_section(run, evaluate(run, None, GateConfig())))
    assert "| latent_preparation | 1500.0 (15.0%) |" in text and "| **total** | 10000 (100%) |" in text, text
    assert ("Latent preparation as shipped is 15.0% of this request. The single-frame encode saves 1475.0 ms of "
            "it at this size and frame count") in text
    assert "14.8% of the request" in text
    alone = make_run([call])
    assert "is not estimated" in "\n".join(diffusers_section(alone, evaluate(alone, None, GateConfig())))


# ---- the gate and the report, on synthetic records ----------------------------------------------------


@pytest.mark.parametrize(("frames", "single_ms", "gated", "passed"),
                         [(81, 100.0, True, True), (81, 600.0, True, False), (1, 990.0, False, True)])
def test_single_frame_must_beat_shipped_in_the_run(make_case, make_run, frames, single_ms, gated, passed):
    run = make_run([make_case(KIND, "single_frame", num_frames=frames, median_ms=single_ms, noise=0.0),
                    make_case(KIND, "shipped", num_frames=frames, median_ms=1000.0, noise=0.0),
                    make_case("latent_prep", "expand", num_frames=frames, median_ms=1.0, noise=0.0)])
    (check,) = evaluate(run, None, GateConfig()).speedups  # ours' expand has no single_frame here: no pair
    assert (check.benchmark, check.new, check.old) == (KIND, "single_frame", "shipped")
    assert (check.min_factor == 2.0) is gated and check.passed is passed
    if not passed:
        assert check.failure.startswith(f"{KIND}[single_frame-vs-shipped-1280x720-81f]: single_frame is only 1.67x "
                                        "faster than shipped")


def test_the_report_section_gives_both_ways_the_factor_and_the_verdict(make_case, make_run):
    eq = EquivalenceRecord(True, True, 0.0, 0.0, "shipped", "bitwise")
    run = make_run([make_case(KIND, "single_frame", median_ms=25.0, noise=0.0, equivalence=eq),
                    make_case(KIND, "shipped", median_ms=1500.0, noise=0.0),
                    make_case(KIND, "single_frame", width=832, height=480, median_ms=20.0, noise=0.0),
                    make_case(KIND, "shipped", width=832, height=480, median_ms=30.0, noise=0.0)])
    text = "\n".join(diffusers_section(run, evaluate(run, None, GateConfig())))
    assert text.startswith(DIFFUSERS_HEADING + "\n") and DIFFUSERS_HEADING == "## diffusers Cosmos3OmniPipeline"
    rows = [line for line in text.splitlines() if line.startswith(("| 1280x720", "| 832x480"))]
    assert rows[0].startswith("| 1280x720 | 81 | 1500.0 | 25.00 | 60.00x | 1475.0 ms (98.3%) | bitwise (against "
                              "shipped) | pass (>= 2.00x) |"), rows
    assert "| 1.50x |" in rows[1] and "| not checked | FAIL (>= 2.00x) |" in rows[1], rows
    assert diffusers_section(make_run([make_case()]), evaluate(make_run([make_case()]), None, GateConfig())) == []


# ---- `python -m bench run -k diffusers` on the CPU: both ways pass; a revert fails the in-run check --------

RUN = ["run", "--preset", "tiny", "-k", "diffusers", "--case", f"{KIND}[*-64x48-33f]", "--rounds", "1,6,6,1"]
E2E = ["--case", f"{KIND}[*-96x64-17f]", "--case", f"{E2E_KIND}[*]"]  # the request, and latent prep at its size


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory):
    """Two child runs: the two ways at 64x48, 33 frames (at 33 frames the shipped way encodes 33 times the
    single frame's work, so the 2x check holds on a loaded 2-core machine), then the same with the revert."""
    root = tmp_path_factory.mktemp("diffusers-bench")
    dirs = ["--results-dir", str(root / "results"), "--baselines-dir", str(root / "none")]
    codes = {"both": main([*RUN, *E2E, *dirs, "--run-id", "both"]),
             "revert": main([*RUN, *dirs, "--run-id", "revert", "--revert-single-frame"])}
    return root / "results", codes


@pytest.mark.slow
def test_bench_run_minus_k_diffusers_measures_both_ways_and_passes(bench_runs):
    results, codes = bench_runs
    assert codes["both"] == 0
    run = load_run(results / "both" / "run.json")
    by_name = run.by_name()
    assert sorted(by_name) == [f"{E2E_KIND}[shipped-96x64-17f]", f"{KIND}[shipped-64x48-33f]",
                               f"{KIND}[shipped-96x64-17f]", f"{KIND}[single_frame-64x48-33f]",
                               f"{KIND}[single_frame-96x64-17f]"]
    call = by_name.pop(f"{E2E_KIND}[shipped-96x64-17f]")
    assert call.rounds == 6 and call.counters is None and call.num_inference_steps == 6
    assert tuple(call.stage_samples_ms) == omni.CALL_STAGES
    assert all(len(v) == 6 for v in call.stage_samples_ms.values())
    single = by_name[f"{KIND}[single_frame-64x48-33f]"]
    assert single.equivalence.bitwise and single.equivalence.reference == "shipped"
    assert by_name[f"{KIND}[shipped-64x48-33f]"].equivalence is None
    assert all(c.rounds == 6 and c.counters is not None and c.counters.kernel_launches > 0 for c in by_name.values())
    summary = (results / "both" / "report" / "summary.md").read_text()
    assert summary.startswith("# cosmos3-bench: PASS") and f"\n{DIFFUSERS_HEADING}\n" in summary
    assert "| bitwise (against shipped) | pass (>= 2.00x) |" in summary
    assert "A whole request through `__call__` as shipped, 96x64, 17 frames, 6 steps" in summary
    assert "Latent preparation as shipped is " in summary and "of the request: an estimate" in summary


@pytest.mark.slow
def test_a_reverted_single_frame_encode_fails_the_in_run_check(bench_runs):
    results, codes = bench_runs
    assert codes["revert"] == 1
    summary = (results / "revert" / "report" / "summary.md").read_text()
    assert f"- {KIND}[single_frame-vs-shipped-64x48-33f]: single_frame is only" in summary
    assert "has the single_frame encode been reverted?" in summary and "This run reverted the patch" in summary
    run = load_run(results / "revert" / "run.json")
    assert run.environment.negative_controls == ("single_frame reverted to expand (diffusers' pipeline: to shipped)",)
