"""Profiler stepping in the denoise loop, and the trace coverage check with its negative control."""

from __future__ import annotations

import gzip
import json

import pytest

from cosmos3.errors import InputError
from cosmos3.pipeline import Cosmos3Pipeline
from cosmos3.profiler import (
    ProfileOptions,
    RequestProfiler,
    check_coverage,
    count_denoise_steps,
    get_active_profiler,
    read_trace,
)
from cosmos3.request import Req
from cosmos3.stages import Cosmos3DenoisingStage
from tests import tiny

STEPS = 6


def request(**fields) -> Req:
    return Req(height=64, width=96, num_frames=5, image=tiny.image(64, 96), num_inference_steps=STEPS, **fields)


def pipeline(tmp_path, n: int, mode: str = "steps") -> Cosmos3Pipeline:
    return Cosmos3Pipeline(tiny.components(), profile=ProfileOptions(tmp_path, mode, n))


def test_n_steps_of_a_longer_request_are_exactly_n(tmp_path):
    out = pipeline(tmp_path, 3)(request(profile=True))
    assert out.coverage.ok, str(out.coverage)
    assert (out.coverage.expected_steps, out.coverage.found_steps) == (3, 3)
    assert out.req.denoise_steps_done == STEPS
    assert out.trace_path.name.endswith(".json.gz")
    assert get_active_profiler() is None


def test_all_steps(tmp_path):
    out = pipeline(tmp_path, -1)(request(profile=True))
    assert (out.coverage.expected_steps, out.coverage.found_steps) == (STEPS, STEPS)


def test_all_stages_mode_records_every_stage(tmp_path):
    out = pipeline(tmp_path, -1, mode="all_stages")(request(profile=True))
    assert out.coverage.ok and out.coverage.found_steps == STEPS
    names = {e.get("name") for e in read_trace(out.trace_path)["traceEvents"]}
    assert any("conv3d" in str(n) for n in names)  # the VAE's work is in it too


def test_more_steps_asked_than_run(tmp_path):
    out = pipeline(tmp_path, 10)(request(profile=True))
    assert (out.coverage.expected_steps, out.coverage.found_steps) == (STEPS, STEPS)


def test_warmup_request_steps_nothing(tmp_path):
    """A warm-up request never steps the profiler, even with a profiler active."""
    profiler = RequestProfiler(ProfileOptions(tmp_path, "steps", 3)).start()
    try:
        pipe = Cosmos3Pipeline(tiny.components())
        pipe.warmup(request(profile=True))
        assert profiler.steps_taken == 0
    finally:
        profiler.stop()


def test_pipeline_warmup_writes_no_trace(tmp_path):
    pipeline(tmp_path, 3).warmup(request(profile=True))
    assert list(tmp_path.glob("*.json.gz")) == []


def test_unprofiled_request_writes_no_trace(tmp_path):
    out = pipeline(tmp_path, 3)(request())
    assert out.trace_path is None and out.coverage is None


class PreFixDenoiser(Cosmos3DenoisingStage):
    """The Cosmos3 loop before the upstream fix: it never advances the profiler."""

    def after_step(self, req: Req) -> None:
        pass


def test_loop_without_profiler_step_fails_coverage(tmp_path):
    """Negative control: the un-fixed loop records every step in one profiler step; coverage says so."""
    pipe = pipeline(tmp_path, 3)
    pipe.denoising = PreFixDenoiser(tiny.components().transformer, tiny.components().text_embeds)
    pipe.stages[3] = pipe.denoising
    out = pipe(request(profile=True))
    assert not out.coverage.ok
    assert out.coverage.found_steps == STEPS and out.coverage.expected_steps == 3
    assert str(out.coverage).startswith("FAIL: 6 of 3")


def test_a_failing_stage_does_not_leave_the_profiler_running(tmp_path):
    pipe = pipeline(tmp_path, 3)

    class Broken(Cosmos3DenoisingStage):
        def forward(self, req):
            raise RuntimeError("boom")

    pipe.denoising = Broken(tiny.components().transformer, tiny.components().text_embeds)
    pipe.stages[3] = pipe.denoising
    with pytest.raises(RuntimeError, match="boom"):
        pipe(request(profile=True))
    assert get_active_profiler() is None


@pytest.mark.parametrize(
    ("mode", "n", "message"),
    [("steps", 0, "num_profiled_timesteps: must be a positive step count"), ("kernels", 3, "profile_mode: must be")],
)
def test_bad_profile_options(mode, n, message):
    with pytest.raises(InputError, match=message):
        ProfileOptions(mode=mode, num_profiled_timesteps=n)


def test_truncated_trace_is_rejected(tmp_path):
    good = pipeline(tmp_path, 2)(request(profile=True)).trace_path
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="trace: must be one complete gzip JSON file"):
        count_denoise_steps(cut)


def test_two_concatenated_traces_are_rejected(tmp_path):
    good = pipeline(tmp_path, 2)(request(profile=True)).trace_path
    double = tmp_path / "double.json.gz"
    double.write_bytes(good.read_bytes() * 2)
    with pytest.raises(InputError, match="one complete gzip JSON"):
        check_coverage(double, 2)


def test_json_without_trace_events_is_rejected(tmp_path):
    path = tmp_path / "other.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"hello": 1}).encode()))
    with pytest.raises(InputError, match="traceEvents"):
        count_denoise_steps(path)
