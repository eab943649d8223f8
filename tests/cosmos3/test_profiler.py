"""Profiler stepping in the denoise loop, and the trace coverage check with its negative control."""

from __future__ import annotations

import gzip
import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity

from cosmos3 import profiler as profiler_module
from cosmos3.errors import InputError
from cosmos3.pipeline import Cosmos3Pipeline
from cosmos3.profiler import (
    DENOISE_STEP_EVENT,
    Coverage,
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


@pytest.mark.parametrize("n", [3, STEPS, -1])
def test_loop_without_profiler_step_fails_coverage(tmp_path, n):
    """Negative control: the un-fixed loop records every step in one profiler step; coverage says so
    whatever N is, also where the window holds every step (N = -1, the command line's default, or N = the
    request's steps) and the trace alone looks complete."""
    pipe = pipeline(tmp_path, n)
    pipe.denoising = PreFixDenoiser(tiny.components().transformer, tiny.components().omni, tiny.components().prompt)
    pipe.stages[3] = pipe.denoising
    out = pipe(request(profile=True))
    expected = STEPS if n == -1 else n
    assert not out.coverage.ok
    assert (out.coverage.found_steps, out.coverage.expected_steps, out.coverage.profiler_steps) == (STEPS, expected, 0)
    assert str(out.coverage).startswith(f"FAIL: 6 of {expected}")
    assert str(out.coverage).endswith(f"the denoise loop advanced the profiler 0 times, not once per step ({expected})")


def test_coverage_wants_a_profiler_step_per_denoising_step(tmp_path):
    path = write_trace(tmp_path / "t.json.gz", [step_event()] * 3)
    assert [check_coverage(path, 3, k).ok for k in (0, 2, 3, 4)] == [False, False, True, True]


def test_a_failing_stage_does_not_leave_the_profiler_running(tmp_path):
    pipe = pipeline(tmp_path, 3)

    class Broken(Cosmos3DenoisingStage):
        def forward(self, req):
            raise RuntimeError("boom")

    pipe.denoising = Broken(tiny.components().transformer, tiny.components().omni, tiny.components().prompt)
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
        check_coverage(double, 2, 2)


def test_json_without_trace_events_is_rejected(tmp_path):
    path = tmp_path / "other.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"hello": 1}).encode()))
    with pytest.raises(InputError, match="traceEvents"):
        count_denoise_steps(path)


# Synthetic traces: the counting rules, one event at a time, without running a profiler.


def step_event(cat: str = "user_annotation", ph: str = "X", name: str = DENOISE_STEP_EVENT) -> dict:
    return {"name": name, "cat": cat, "ph": ph, "ts": 0, "dur": 1, "pid": 1, "tid": 1}


def write_trace(path: Path, events: list[dict]) -> Path:
    path.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    return path


def test_a_cuda_trace_counts_each_step_once(tmp_path):
    """On CUDA every record_function span appears twice, host and device; only the host copy counts."""
    events = [step_event("user_annotation"), step_event("gpu_user_annotation")] * 3
    assert count_denoise_steps(write_trace(tmp_path / "t.json.gz", events)) == 3
    assert check_coverage(tmp_path / "t.json.gz", 3, 3).ok


@pytest.mark.parametrize(
    "other",
    [
        step_event(name="cosmos3.denoise"),  # another span
        step_event(name="aten::mm", cat="cpu_op"),
        step_event(ph="B"),  # only complete spans ("X") count
        step_event(ph="i"),
        {"cat": "user_annotation", "ph": "X"},  # no name
        {"name": DENOISE_STEP_EVENT, "ph": "X"},  # no category
        {"name": DENOISE_STEP_EVENT, "cat": "user_annotation"},  # no phase
    ],
)
def test_only_host_side_complete_step_spans_count(tmp_path, other):
    events = [step_event(), other, step_event()]
    assert count_denoise_steps(write_trace(tmp_path / "t.json.gz", events)) == 2


def test_a_trace_without_steps_counts_zero(tmp_path):
    assert count_denoise_steps(write_trace(tmp_path / "t.json.gz", [])) == 0


@pytest.mark.parametrize(("found", "ok"), [(2, False), (3, True), (4, False)])
def test_coverage_wants_exactly_the_steps_asked_for(tmp_path, found, ok):
    """Fewer steps than asked is as wrong as more: either way the trace is not the N steps asked for."""
    path = write_trace(tmp_path / "t.json.gz", [step_event()] * found)
    coverage = check_coverage(str(path), 3, 3)
    assert coverage == Coverage(path, 3, found, 3)
    assert coverage.ok is ok
    verdict = "OK" if ok else "FAIL"
    assert str(coverage) == f"{verdict}: {found} of 3 expected denoising steps in {path}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (gzip.compress(b'[{"traceEvents": []}]'), r"must be a Chrome trace object with a traceEvents list \(got '"),
        (gzip.compress(b'{"traceEvents": {}}'), r"must be a Chrome trace object with a traceEvents list \(got '"),
        (b'{"traceEvents": []}', r"must be one complete gzip JSON file \(BadGzipFile: "),
        (gzip.compress(b'{"traceEvents": []}')[:-4], r"must be one complete gzip JSON file \(EOFError: "),
        (gzip.compress(b'"\xff"'), r"must be one complete gzip JSON file \(UnicodeDecodeError: "),
        (gzip.compress(b'{"traceEvents": ['), r"must be one complete gzip JSON file \(JSONDecodeError: "),
    ],
    ids=["list", "events-not-a-list", "not-gzip", "cut-gzip", "not-utf8", "cut-json"],
)
def test_malformed_traces_are_rejected(tmp_path, content, message):
    path = tmp_path / "bad.json.gz"
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"^trace: {message}") as info:
        read_trace(str(path))
    assert (info.value.field, info.value.value) == ("trace", str(path))


def test_read_trace_returns_the_whole_object(tmp_path):
    path = tmp_path / "t.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"traceEvents": [step_event()], "deviceProperties": []}).encode()))
    assert read_trace(path) == {"traceEvents": [step_event()], "deviceProperties": []}


@pytest.mark.parametrize("n", [-2, 0])
def test_step_count_must_be_positive_or_minus_one(n):
    rule = r"num_profiled_timesteps: must be a positive step count, or -1 for all steps \(got -?\d\)"
    with pytest.raises(InputError, match=rule) as info:
        ProfileOptions(num_profiled_timesteps=n)
    assert info.value.value == n


def test_profile_options_defaults_and_accepted_values():
    assert ProfileOptions() == ProfileOptions(Path("results/traces"), "steps", -1)
    assert ProfileOptions(mode="all_stages", num_profiled_timesteps=1).num_profiled_timesteps == 1
    with pytest.raises(InputError, match=r"profile_mode: must be 'steps' or 'all_stages' \(got 'kernels'\)"):
        ProfileOptions(mode="kernels")


@pytest.mark.parametrize(
    ("mode", "n", "expected"), [("steps", 3, 3), ("steps", -1, None), ("all_stages", 3, None), ("all_stages", -1, None)]
)
def test_expected_steps(tmp_path, mode, n, expected):
    options = ProfileOptions(tmp_path, mode, n)
    profiler = RequestProfiler(options)
    assert profiler.expected_steps == expected
    assert profiler.options is options
    assert (profiler.out_dir, profiler.mode, profiler.num_profiled_timesteps) == (tmp_path, mode, n)
    assert (profiler.steps_taken, profiler.trace_path, profiler.running) == (0, None, False)


def test_cuda_activity_only_where_cuda_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profiler_module._activities() == [ProfilerActivity.CPU]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profiler_module._activities() == [ProfilerActivity.CPU, ProfilerActivity.CUDA]


def test_lifecycle_misuse_is_refused(tmp_path):
    out_dir = tmp_path / "not" / "yet"
    profiler = RequestProfiler(ProfileOptions(out_dir, "steps", 2))
    with pytest.raises(RuntimeError, match=r"^step\(\) before start\(\)$"):
        profiler.step()
    with pytest.raises(RuntimeError, match=r"^stop\(\) before start\(\)$"):
        profiler.stop()
    profiler.start()
    try:
        assert profiler.running and get_active_profiler() is profiler
        with pytest.raises(RuntimeError, match="^a request profiler is already active in this process$"):
            RequestProfiler(ProfileOptions(tmp_path, "all_stages")).start()
        assert get_active_profiler() is profiler
    finally:
        path = profiler.stop()
    assert get_active_profiler() is None and not profiler.running
    assert path == profiler.trace_path and path.parent == out_dir  # made on demand, parents too
    with pytest.raises(RuntimeError, match=r"^stop\(\) before start\(\)$"):
        profiler.stop()


def test_schedule_warning_is_not_shown(tmp_path):
    """Zero warm-up is deliberate (upstream records the first N steps); torch's warning about it is noise."""
    profiler = RequestProfiler(ProfileOptions(tmp_path, "steps", 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        profiler.start()
    profiler.stop()
    assert [str(w.message) for w in caught if "warmup" in str(w.message)] == []


def run_marked_steps(profiler: RequestProfiler, n: int) -> None:
    """n denoising steps of tiny matmuls, step i also marked "step-i" to tell which steps a trace holds."""
    x = torch.ones(4, 4)
    for i in range(n):
        with torch.profiler.record_function(DENOISE_STEP_EVENT), torch.profiler.record_function(f"step-{i}"):
            x = x @ x
        profiler.step()


def marked_steps(path: Path) -> list[str]:
    return sorted(e["name"] for e in read_trace(path)["traceEvents"] if str(e.get("name")).startswith("step-"))


def test_schedule_records_the_first_n_steps_and_exports_once(tmp_path):
    """A bare profiler stepped by hand: the schedule alone cuts the trace after the first N steps."""
    profiler = RequestProfiler(ProfileOptions(tmp_path, "steps", 2)).start()
    run_marked_steps(profiler, 5)
    assert profiler.steps_taken == 5
    exported = profiler.trace_path
    assert exported is not None  # written by the schedule after step 2, before stop()
    assert profiler.stop() == exported
    assert list(tmp_path.iterdir()) == [exported]  # one trace, no temporary file left
    assert re.fullmatch(rf"trace-steps-\d{{8}}-\d{{6}}-{os.getpid()}-{id(profiler):x}\.json\.gz", exported.name)
    assert marked_steps(exported) == ["step-0", "step-1"]
    assert count_denoise_steps(exported) == 2


def test_all_stages_records_everything_and_exports_on_stop(tmp_path):
    profiler = RequestProfiler(ProfileOptions(tmp_path, "all_stages", 2)).start()
    run_marked_steps(profiler, 3)
    assert profiler.trace_path is None
    path = profiler.stop()
    assert path.name.startswith("trace-all_stages-")
    assert marked_steps(path) == ["step-0", "step-1", "step-2"]
    assert count_denoise_steps(path) == 3
