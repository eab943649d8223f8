"""tools/e2e_stage_counters.py's per-stage analysis on a whole-request trace shaped as Kineto writes it on CUDA."""

from __future__ import annotations

import sys

import pytest

from bench.measure.collector import GC_EVENT
from bench.measure.counters import IncompleteProfile, trace_events
from cosmos3.pipeline import STAGE_EVENT
from tests.repo import load_tool

STAGES = ("preprocess", "latent_preparation", "denoising")


@pytest.fixture(scope="module")
def tool():
    module = load_tool("e2e_stage_counters.py")
    yield module
    del sys.modules[module.__name__]


class Trace:
    """Builds a Chrome trace's complete events: host calls with correlation ids and their device records."""

    def __init__(self):
        self.events, self.correlation = [], 0

    def host(self, cat, name, ts, dur=1.0, **args):
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur,
                            "args": args})

    def call(self, name, ts, device=None, device_name="", dur=2.0, nbytes=0):
        """A cuda_runtime call at `ts`; its device record (kernel, gpu_memcpy, gpu_memset) 500 us later."""
        self.correlation += 1
        self.host("cuda_runtime", name, ts, 1.0, correlation=self.correlation, cbid=211)
        if device:
            args = {"correlation": self.correlation, "stream": 7, "device": 0}
            if device != "kernel":
                args["bytes"] = nbytes
            self.events.append({"ph": "X", "cat": device, "name": device_name, "pid": 0, "tid": 7,
                                "ts": ts + 500.0, "dur": dur, "args": args})

    def stage_work(self, t0, kernels):
        """A stage's work: `kernels` launches (4 us each), a pageable upload, a sync, an allocation, an empty memset."""
        self.host("cpu_op", "aten::add", t0 + 1.0, 5.0)
        for i in range(kernels):
            self.call("cudaLaunchKernel_ptsz", t0 + 10.0 + i, "kernel", "elementwise_kernel", dur=4.0)
        self.call("cudaMemcpyAsync", t0 + 40.0, "gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", dur=10.0,
                  nbytes=1024)
        self.call("cudaStreamSynchronize_ptsz", t0 + 50.0)
        self.call("cudaMalloc_v3020", t0 + 60.0)
        self.call("cudaMemsetAsync", t0 + 70.0)  # zero bytes: no device record


def whole_request() -> Trace:
    trace = Trace()
    for i, stage in enumerate(STAGES):
        t0 = 1000.0 * i
        trace.host("user_annotation", STAGE_EVENT + stage, t0, 100.0)
        trace.stage_work(t0, kernels=i + 1)
        # The pipeline between stages: a launch of no stage.
        trace.call("cudaLaunchKernel", t0 + 200.0, "kernel", "glue_kernel", dur=3.0)
    trace.host("user_annotation", f"{GC_EVENT}2", 1080.0, 1500.0 / 1e3)  # a collection in latent_preparation
    return trace


def test_each_stage_counts_its_own_work(tool):
    events = trace_events({"traceEvents": whole_request().events})
    table = tool.stage_table(events, {stage: 10.0 * (i + 1) for i, stage in enumerate(STAGES)}, "cuda")
    assert list(table) == [f"e2e {stage}" for stage in STAGES]
    for i, stage in enumerate(STAGES):
        row = table[f"e2e {stage}"]
        assert row["wall_ms"] == 10.0 * (i + 1)
        assert row["kernels"] == i + 1  # not the glue kernels, not the other stages' kernels
        assert row["device_ms"] == pytest.approx((4.0 * (i + 1) + 10.0) / 1e3)
        assert (row["h2d_copies"], row["h2d_bytes"], row["pageable_copies"], row["syncs"]) == (1, 1024, 1, 1)
        assert (row["cudaMalloc"], row["cudaFree"]) == (1, 0)
        assert (row["empty_copies"], row["unnamed_calls"]) == (1, 0)
        assert (row["gc_collections"], row["gc_ms"]) == ((1, 1.5e-3) if stage == "latent_preparation" else (0, 0.0))


def test_the_stages_are_named_by_their_windows_in_any_order(tool):
    events = trace_events({"traceEvents": whole_request().events})
    table = tool.stage_table(events, {"denoising": 1.0, "preprocess": 2.0, "latent_preparation": 3.0}, "cuda")
    assert [table[f"e2e {s}"]["kernels"] for s in STAGES] == [1, 2, 3]
    with pytest.raises(ValueError, match="not the request's"):
        tool.stage_table(events, {"preprocess": 1.0}, "cuda")


def test_a_kernel_of_no_stage_without_its_launch_still_raises(tool):
    trace = whole_request()
    trace.events.append({"ph": "X", "cat": "kernel", "name": "stray", "pid": 0, "tid": 7, "ts": 5000.0, "dur": 1.0,
                         "args": {"correlation": 999}})
    with pytest.raises(IncompleteProfile, match="1 device records"):
        tool.stage_table(trace_events({"traceEvents": trace.events}), dict.fromkeys(STAGES, 1.0), "cuda")


def test_a_dropped_kernel_record_in_a_stage_raises(tool):
    trace = whole_request()
    kernel = next(e for e in trace.events if e["cat"] == "kernel" and e["name"] == "elementwise_kernel")
    trace.events.remove(kernel)
    with pytest.raises(IncompleteProfile, match="1 of 1 kernel or graph launches"):
        tool.stage_table(trace_events({"traceEvents": trace.events}), dict.fromkeys(STAGES, 1.0), "cuda")
