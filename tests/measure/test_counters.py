"""Work counters: identical over rounds and processes on the CPU, exact on synthetic CUDA events, strict loader."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from bench.measure import counters
from bench.measure.counters import (
    FENCE_EVENT,
    ROUND_EVENT,
    KernelStat,
    TraceEvent,
    WorkCounters,
    combine_rounds,
    count_round,
    flop_count,
    profile_rounds,
    split_rounds,
    trace_events,
)
from cosmos3.errors import InputError
from cosmos3.vae import encode_latents
from tests import tiny
from tests.repo import REPO

CPU = torch.device("cpu")

_gen = torch.Generator().manual_seed(0)
A = torch.randn(16, 32, generator=_gen)
B = torch.randn(32, 8, generator=_gen)
IMAGE = torch.randn(1, 3, 12, 12, generator=_gen)
KERNEL = torch.randn(4, 3, 3, 3, generator=_gen)


def small_work() -> torch.Tensor:
    """Two matmuls and a convolution on fixed shapes."""
    y = (A @ B) @ B.T
    z = torch.nn.functional.conv2d(IMAGE, KERNEL)
    return y.sum() + z.sum()


def vae_encode():
    video = tiny.image(32, 48).unsqueeze(2)  # [1, 3, 1, H, W]: the single-frame encode
    return lambda: encode_latents(tiny.vae(), video)


# --- measured on the CPU -------------------------------------------------------------------------


def test_small_function_counts_are_positive_and_identical_over_rounds():
    work = profile_rounds(small_work, CPU, rounds=3)
    assert work.source == "cpu" and work.profiled_rounds == 3
    assert work.consistent, work.varying_counters
    assert work.kernel_launches > 0
    assert KernelStat("aten::mm", 2, None) in work.top_kernels
    # 2 matmuls (16x32 @ 32x8, 16x8 @ 8x32) and a 3->4 channel 3x3 convolution to 10x10.
    assert work.flops == 2 * 16 * 8 * 32 + 2 * 16 * 32 * 8 + 2 * (4 * 10 * 10) * (3 * 3 * 3)
    assert (work.h2d_copies, work.h2d_bytes, work.d2h_copies, work.d2h_bytes, work.syncs) == (0, 0, 0, 0, 0)
    assert work.device_ms_samples == () and work.device_ms is None
    assert all(k.device_ms is None for k in work.top_kernels)
    assert profile_rounds(small_work, CPU, rounds=2) == profile_rounds(small_work, CPU, rounds=2)


def test_tiny_vae_encode_counts_are_positive_and_identical_over_rounds():
    encode = vae_encode()
    with torch.no_grad():
        work = profile_rounds(encode, CPU, rounds=3)
        flops = flop_count(encode)
    assert work.consistent, work.varying_counters
    assert work.kernel_launches > 100 and work.top_kernels
    assert work.flops == flops > 0


def test_one_extra_op_is_exactly_one_more_launch_and_named():
    base = profile_rounds(lambda: A @ B, CPU, rounds=2)
    more = profile_rounds(lambda: (A @ B, A.neg()), CPU, rounds=2)
    assert more.kernel_launches - base.kernel_launches == 1
    assert "aten::neg" not in {k.name for k in base.top_kernels}
    assert KernelStat("aten::neg", 1, None) in more.top_kernels
    assert set(more.top_kernels) - set(base.top_kernels) == {KernelStat("aten::neg", 1, None)}
    assert more.flops == base.flops == 2 * 16 * 8 * 32  # elementwise ops count no FLOPs


def test_flops_of_a_matmul_are_2mnk():
    m, k, n = 24, 40, 56
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert flop_count(lambda: a @ b) == 2 * m * n * k


# --- the CUDA branch, on synthetic CUDA-like events ----------------------------------------------


def cuda_round(kernel_us: float = 100.0, *, t0: float = 0.0, c0: int = 0, device_shift_us: float = 0.0):
    """One round as Kineto records it on CUDA: host ops and runtime calls, device kernels and copies.

    Host events start at `t0`; correlation ids at `c0`; device timestamps are moved by
    `device_shift_us` (a drifting GPU clock must not move work between rounds).
    """
    def host(cat, name, ts, dur, corr=0):
        return TraceEvent(cat, name, t0 + ts, dur, correlation=c0 + corr if corr else 0)

    def dev(cat, name, ts, dur, corr, nbytes=0):
        return TraceEvent(cat, name, t0 + ts + device_shift_us, dur, nbytes=nbytes, correlation=c0 + corr)

    return [
        host("user_annotation", ROUND_EVENT, 0.0, 420.0),
        host("cpu_op", "aten::mm", 0.5, 30.0),
        host("cuda_runtime", "cudaMemcpyAsync", 1.0, 5.0, 1),
        dev("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 2.0, 50.0, 1, nbytes=4096),
        host("cuda_runtime", "cudaStreamSynchronize", 7.0, 60.0, 2),
        host("cuda_runtime", "cudaLaunchKernel", 70.0, 4.0, 3),
        dev("kernel", "sm90_xmma_gemm_bf16", 75.0, kernel_us, 3),
        host("cuda_runtime", "cudaLaunchKernelExC_v11060", 80.0, 4.0, 4),
        dev("kernel", "sm90_xmma_gemm_bf16", 180.0, kernel_us, 4),
        host("cuda_driver", "cuLaunchKernel", 90.0, 4.0, 5),
        dev("kernel", "triton_poi_fused_add_0", 280.0, 25.0, 5),
        host("cuda_runtime", "cudaMemsetAsync", 95.0, 2.0, 6),
        dev("gpu_memset", "Memset (Device)", 300.0, 12.5, 6, nbytes=64),
        host("cuda_runtime", "cudaMemcpyAsync", 96.0, 2.0, 7),
        dev("gpu_memcpy", "Memcpy DtoD (Device -> Device)", 320.0, 12.5, 7, nbytes=999),
        host("cuda_runtime", "cudaMemcpy_v3020", 330.0, 40.0, 8),  # synchronous: a sync
        dev("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", 340.0, 25.0, 8, nbytes=128),
        host("cuda_runtime", "cudaEventSynchronize", 380.0, 1.0, 9),
        host("cuda_runtime", "cudaStreamWaitEvent", 381.0, 1.0, 10),  # device-side wait: no host sync
        # Spans, not work: never kernels, never device time.
        dev("gpu_user_annotation", "cosmos3.denoise_step", 75.0, 250.0, 3),
        host("user_annotation", "cosmos3.denoise_step", 0.5, 100.0),
        dev("cuda_sync", "Context Sync", 390.0, 5.0, 11),
        # The round's own closing sync, inside the fence annotation: not the case's.
        host("user_annotation", FENCE_EVENT, 400.0, 10.0),
        host("cuda_runtime", "cudaDeviceSynchronize", 401.0, 8.0, 12),
    ]


def test_cuda_events_are_counted_exactly():
    counts = count_round(cuda_round(), source="cuda")
    assert counts.kernel_launches == 3
    assert (counts.h2d_copies, counts.h2d_bytes) == (1, 4096)
    assert (counts.d2h_copies, counts.d2h_bytes) == (1, 128)
    assert counts.syncs == 3  # cudaStreamSynchronize, cudaMemcpy, cudaEventSynchronize
    # kernels 100 + 100 + 25, copies 50 + 12.5 + 25, memset 12.5 (us)
    assert counts.device_ms == 0.325
    assert counts.kernels == (
        KernelStat("sm90_xmma_gemm_bf16", 2, 0.2),
        KernelStat("triton_poi_fused_add_0", 1, 0.025),
    )


def test_a_sync_outside_the_fence_counts():
    events = [*cuda_round(), TraceEvent("cuda_runtime", "cudaDeviceSynchronize", 399.0, 0.5, correlation=99)]
    assert count_round(events, source="cuda").syncs == 4


def test_a_launch_without_its_device_record_fails_the_round():
    """What pytorch#192021 does: the kernel record of a launch is dropped, the launch is not."""
    events = [e for e in cuda_round() if not (e.category == "kernel" and e.correlation == 4)]
    with pytest.raises(counters.IncompleteProfile, match="1 of 3 kernel or graph launches"):
        count_round(events, source="cuda")


def test_cpu_source_ignores_device_events_and_counts_ops():
    counts = count_round(cuda_round(), source="cpu")
    assert counts.kernel_launches == 1 and counts.kernels == (KernelStat("aten::mm", 1, None),)
    assert counts.device_ms is None


def test_rounds_are_split_by_host_annotation_and_correlation():
    """Device records follow their launch's correlation id, wherever their (drifting) clock puts them."""
    events = [
        TraceEvent("cuda_runtime", "cudaGetDeviceCount", -50.0, 1.0, correlation=1000),  # before any round
        *cuda_round(t0=0.0, c0=0, device_shift_us=+700.0),  # device times land in the next round's window
        *cuda_round(t0=1000.0, c0=100, device_shift_us=-900.0),  # ... and before its own
    ]
    first, second = split_rounds(events)
    assert count_round(first, source="cuda") == count_round(cuda_round(), source="cuda")
    assert count_round(second, source="cuda") == count_round(cuda_round(), source="cuda")


def test_device_work_without_its_launch_falls_back_to_the_time_window():
    """Kineto keeps only some driver API calls: a kernel whose launch is not in the trace goes by time."""
    unlaunched = TraceEvent("kernel", "cublasLt_kernel", 10.0, 1.0, correlation=4242)
    (events,) = split_rounds([*cuda_round(), unlaunched])
    assert unlaunched in events
    with pytest.raises(counters.IncompleteProfile, match="1 device records"):
        split_rounds([*cuda_round(), TraceEvent("kernel", "stray", 5000.0, 1.0, correlation=4242)])


def test_trace_events_reads_complete_events_with_bytes_and_correlation():
    trace = {"traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "python"}},
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 10.5, "dur": 2.25, "args": {"correlation": 7}},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "ts": 1, "dur": 3,
         "args": {"bytes": 512, "memory bandwidth (GB/s)": 1.0, "correlation": 8}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.5, "dur": 4, "args": {"External id": 3}},
        {"ph": "s", "id": 7, "cat": "ac2g", "name": "ac2g", "ts": 9},
        {"ph": "i", "s": "g", "name": "Record Window End", "ts": 20},
    ]}
    assert trace_events(trace) == [
        TraceEvent("kernel", "k", 10.5, 2.25, 0, 7),
        TraceEvent("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 1.0, 3.0, 512, 8),
        TraceEvent("cpu_op", "aten::mm", 0.5, 4.0),
    ]


def test_rounds_combine_into_medians_and_name_what_varied():
    rounds = [count_round(cuda_round(kernel_us=us), source="cuda") for us in (100.0, 150.0, 110.0)]
    work = combine_rounds(rounds, source="cuda", flops=123)
    assert work.consistent and work.profiled_rounds == 3 and work.flops == 123
    assert work.device_ms_samples == (0.325, 0.425, 0.345) and work.device_ms == 0.345
    assert work.top_kernels[0] == KernelStat("sm90_xmma_gemm_bf16", 2, 0.22)

    extra = [TraceEvent("cuda_runtime", "cudaLaunchKernel", 200.0, 1.0, correlation=50),
             TraceEvent("kernel", "extra", 500.0, 1.0, correlation=50)]
    odd = count_round([*cuda_round(), *extra], source="cuda")
    work = combine_rounds([rounds[0], odd], source="cuda", flops=0)
    assert work.varying_counters == ("kernel_launches", "top_kernels") and not work.consistent
    assert work.kernel_launches == 4  # the larger round
    assert KernelStat("extra", 1, 0.0005) in work.top_kernels  # median of 0 and 1 us


def test_top_kernels_hold_the_longest_kernels_too(monkeypatch):
    monkeypatch.setattr(counters, "TOP_KERNELS", 2)
    events = [TraceEvent("kernel", f"small{i}", 0.0, 1.0) for i in range(3) for _ in range(5)]
    events.append(TraceEvent("kernel", "slow", 0.0, 1000.0))
    work = combine_rounds([count_round(events, source="cuda")], source="cuda", flops=0)
    assert [k.name for k in work.top_kernels] == ["small0", "small1", "slow"]


def fake_record_rounds(make_round):
    """Stands in for the profiler on a machine without a GPU: runs fn, returns synthetic CUDA events."""
    def record(fn, device, n_rounds):
        events = []
        for i in range(n_rounds):
            fn()
            events += make_round(t0=1000.0 * i, c0=100 * i)
        return events
    return record


def test_profile_rounds_on_cuda_reads_device_events(monkeypatch):
    monkeypatch.setattr(counters, "record_rounds", fake_record_rounds(cuda_round))
    work = profile_rounds(small_work, torch.device("cuda"), rounds=2)
    assert (work.source, work.profiled_rounds, work.kernel_launches, work.syncs) == ("cuda", 2, 3, 3)
    assert work.device_ms_samples == (0.325, 0.325) and work.consistent
    assert work.flops == flop_count(small_work)


def test_profile_rounds_on_cuda_without_device_events_fails(monkeypatch):
    def host_only(**kw):
        return [e for e in cuda_round(**kw) if e.category in ("cpu_op", "user_annotation")]
    monkeypatch.setattr(counters, "record_rounds", fake_record_rounds(host_only))
    with pytest.raises(counters.IncompleteProfile, match="no CUDA kernels"):
        profile_rounds(small_work, torch.device("cuda"))


def test_profile_rounds_rejects_other_devices_and_zero_rounds():
    with pytest.raises(InputError, match="device"):
        profile_rounds(small_work, torch.device("meta"))
    with pytest.raises(InputError, match="rounds"):
        profile_rounds(small_work, CPU, rounds=0)


# --- the record --------------------------------------------------------------------------------


def cuda_counters() -> WorkCounters:
    rounds = [count_round(cuda_round(kernel_us=us), source="cuda") for us in (100.0, 101.5)]
    return combine_rounds(rounds, source="cuda", flops=2**40)


def test_round_trip_through_json():
    for work in (cuda_counters(), profile_rounds(small_work, CPU, rounds=1)):
        data = json.loads(json.dumps(work.to_dict()))
        assert WorkCounters.from_dict(data) == work
        assert WorkCounters.from_dict(data).to_dict() == work.to_dict()
        assert list(data) == [f.name for f in dataclasses.fields(WorkCounters)]


def broken(edit) -> dict:
    data = cuda_counters().to_dict()
    edit(data)
    return data


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.pop("syncs"), "c.syncs"),
        (lambda d: d.update(kernel_count=1), "c.kernel_count"),
        (lambda d: d.update(h2d_bytes=-1), "c.h2d_bytes"),
        (lambda d: d.update(d2h_copies=1.0), "c.d2h_copies"),
        (lambda d: d.update(kernel_launches=True), "c.kernel_launches"),
        (lambda d: d.update(flops="many"), "c.flops"),
        (lambda d: d.update(source="xpu"), "c.source"),
        (lambda d: d.update(profiled_rounds=0), "c.profiled_rounds"),
        (lambda d: d["device_ms_samples"].__setitem__(1, math.nan), "c.device_ms_samples[1]"),
        (lambda d: d["device_ms_samples"].__setitem__(0, -0.5), "c.device_ms_samples[0]"),
        (lambda d: d["device_ms_samples"].pop(), "c.device_ms_samples"),
        (lambda d: d["top_kernels"][1].update(device_ms=math.inf), "c.top_kernels[1].device_ms"),
        (lambda d: d["top_kernels"][0].update(launches=-2), "c.top_kernels[0].launches"),
        (lambda d: d["top_kernels"][0].pop("name"), "c.top_kernels[0].name"),
        (lambda d: d["top_kernels"][0].update(stream=7), "c.top_kernels[0].stream"),
        (lambda d: d.update(top_kernels={}), "c.top_kernels"),
        (lambda d: d.update(varying_counters=["wall_ms"]), "c.varying_counters[0]"),
    ],
)
def test_loader_names_the_broken_field(edit, field):
    with pytest.raises(InputError) as info:
        WorkCounters.from_dict(broken(edit), source="c")
    assert info.value.field == field


def test_loader_rejects_device_times_on_cpu():
    data = profile_rounds(small_work, CPU, rounds=1).to_dict()
    data["device_ms_samples"] = [1.0]
    with pytest.raises(InputError) as info:
        WorkCounters.from_dict(data)
    assert info.value.field == "counters.device_ms_samples"


# --- across processes ---------------------------------------------------------------------------

CHILD = """
import json, torch
from bench.measure.counters import profile_rounds
from tests.measure import test_counters as t
with torch.no_grad():
    out = {"small": profile_rounds(t.small_work, t.CPU, rounds=2).to_dict(),
           "vae": profile_rounds(t.vae_encode(), t.CPU, rounds=2).to_dict()}
print(json.dumps(out))
"""


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers: 20 s on the 2-core test machine
def test_counters_are_equal_across_processes():
    """A fresh process (its own allocator, thread pools and import order) counts the same work as this one."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                           check=True, timeout=300)
    there = json.loads(child.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        here = {"small": profile_rounds(small_work, CPU, rounds=2).to_dict(),
                "vae": profile_rounds(vae_encode(), CPU, rounds=2).to_dict()}
    assert there == here
    assert here["vae"]["kernel_launches"] > 100 and not here["vae"]["varying_counters"]


# --- every rule at its edge, every message in full -------------------------------------------------


def test_an_event_without_a_duration_lasts_zero():
    trace = {"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::empty", "ts": 3}]}
    assert trace_events(trace) == [TraceEvent("cpu_op", "aten::empty", 3.0, 0.0)]


def test_an_event_on_either_edge_of_a_round_is_in_it():
    start = TraceEvent("cpu_op", "aten::add", 0.0, 1.0)
    end = TraceEvent("cpu_op", "aten::mul", 420.0, 1.0)
    (events,) = split_rounds([*cuda_round(), start, end])
    assert start in events and end in events


def test_stray_device_records_are_all_counted_in_the_message():
    strays = [TraceEvent("kernel", "stray", 5000.0 + i, 1.0, correlation=4242 + i) for i in range(3)]
    with pytest.raises(counters.IncompleteProfile) as err:
        split_rounds([*cuda_round(), *strays])
    assert str(err.value) == ("3 device records (kernels, copies, memsets) belong to no profiled round: "
                              "work launched outside the rounds")


def test_count_round_names_a_bad_source():
    with pytest.raises(InputError) as err:
        count_round([], source="xpu")
    assert str(err.value) == "source: must be one of ('cuda', 'cpu') (got 'xpu')"


def test_copies_and_syncs_add_up_over_a_round():
    events = [*cuda_round(), *cuda_round(t0=0.0, c0=100)]  # one round holding the work twice
    counts = count_round(events, source="cuda")
    assert (counts.h2d_copies, counts.h2d_bytes, counts.d2h_copies, counts.d2h_bytes) == (2, 8192, 2, 256)
    assert counts.syncs == 6


def test_a_copy_of_another_kind_or_name_is_no_host_copy():
    odd = [TraceEvent("cuda_runtime", "cudaMemcpyAsync", 100.0, 1.0, correlation=70),
           TraceEvent("gpu_memcpy", "Memcpy PtoP (Device -> Device)", 101.0, 1.0, nbytes=8, correlation=70),
           TraceEvent("cuda_runtime", "cudaMemcpyAsync", 102.0, 1.0, correlation=71),
           TraceEvent("gpu_memcpy", "peer copy", 103.0, 1.0, nbytes=8, correlation=71)]
    plain, more = count_round(cuda_round(), source="cuda"), count_round([*cuda_round(), *odd], source="cuda")
    assert (more.h2d_copies, more.d2h_copies, more.h2d_bytes) == (plain.h2d_copies, plain.d2h_copies, plain.h2d_bytes)


@pytest.mark.parametrize("at", [400.0, 410.0])
def test_a_sync_on_either_edge_of_the_fence_is_the_rounds_own(at):
    events = [*cuda_round(), TraceEvent("cuda_runtime", "cudaDeviceSynchronize", at, 0.5, correlation=99)]
    assert count_round(events, source="cuda").syncs == 3


def test_a_dropped_device_record_is_named_in_full():
    events = [e for e in cuda_round() if not (e.category == "kernel" and e.correlation in (4, 5))]
    with pytest.raises(counters.IncompleteProfile) as err:
        count_round(events, source="cuda")
    assert str(err.value) == ("2 of 3 kernel or graph launches of a round have no device record: the profiler "
                              "dropped them (see pytorch#192021), the counts would be short")


def test_combining_no_rounds_is_refused():
    with pytest.raises(InputError) as err:
        combine_rounds([], source="cpu", flops=0)
    assert str(err.value) == "rounds: must hold at least one profiled round (got 0)"


def test_the_profiler_records_device_activity_on_cuda_only(monkeypatch):
    """The activities asked of torch.profiler: CPU, plus CUDA on a CUDA device (checked here with the
    device synchronisation stubbed out, and the session run on the CPU whatever was asked)."""
    asked = []
    real_profile = counters.profile

    def spy(*, activities):
        asked.append(list(activities))
        return real_profile(activities=[torch.profiler.ProfilerActivity.CPU])

    monkeypatch.setattr(counters, "profile", spy)
    monkeypatch.setattr(counters, "synchronize", lambda device: None)
    counters.record_rounds(small_work, CPU, 1)
    counters.record_rounds(small_work, torch.device("cuda"), 1)
    CPU_, CUDA_ = torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA
    assert asked == [[CPU_], [CPU_, CUDA_]]


def test_profile_rounds_names_the_device_and_rounds_rules():
    with pytest.raises(InputError) as err:
        profile_rounds(small_work, torch.device("meta"))
    assert str(err.value) == "device: must be a cuda or cpu device (got 'meta')"
    for rounds, warmup in ((0, 1), (1, -1)):
        with pytest.raises(InputError) as err:
            profile_rounds(small_work, CPU, rounds=rounds, warmup_rounds=warmup)
        assert str(err.value) == f"rounds: needs rounds >= 1 and warmup_rounds >= 0 (got ({rounds}, {warmup}))"
    assert profile_rounds(small_work, CPU, rounds=1, warmup_rounds=0).profiled_rounds == 1


def test_a_trace_with_rounds_missing_is_incomplete(monkeypatch):
    monkeypatch.setattr(counters, "split_rounds", lambda events: [[], []])
    with pytest.raises(counters.IncompleteProfile) as err:
        profile_rounds(small_work, CPU, rounds=3, warmup_rounds=1)
    assert str(err.value) == "the trace holds 2 rounds, 4 ran"


def test_no_device_work_on_cuda_says_what_to_check(monkeypatch):
    def host_only(**kw):
        return [e for e in cuda_round(**kw) if e.category in ("cpu_op", "user_annotation")]
    monkeypatch.setattr(counters, "record_rounds", fake_record_rounds(host_only))
    with pytest.raises(counters.IncompleteProfile) as err:
        profile_rounds(small_work, torch.device("cuda:0"))
    assert str(err.value) == ("torch.profiler recorded no CUDA kernels, copies or memsets in a round on cuda:0; "
                              "is CUPTI activity tracing available to this process?")


def test_every_value_read_back_on_the_cpu_is_a_sync():
    events = [TraceEvent("cpu_op", counters.CPU_SYNC_OP, float(t), 1.0) for t in range(3)]
    assert count_round(events, source="cpu").syncs == 3


# --- empty copies, suffixed and unnamed calls (issue "The first GPU run passes", defects 1, 2) ------


def test_a_memset_or_copy_call_without_a_device_record_is_empty_not_dropped():
    """cuDNN's zero-byte cudaMemsetAsync enqueues nothing: counted apart, not raised."""
    empty = [TraceEvent("cuda_runtime", "cudaMemsetAsync", 100.0, 0.5, correlation=80),
             TraceEvent("cuda_runtime", "cudaMemcpyAsync_ptsz", 101.0, 0.5, correlation=81)]
    plain, more = count_round(cuda_round(), source="cuda"), count_round([*cuda_round(), *empty], source="cuda")
    assert plain.empty_copies == 0 and more.empty_copies == 2
    assert dataclasses.replace(more, empty_copies=0) == plain


@pytest.mark.parametrize("launch", ["cudaLaunchKernel_ptsz", "cudaGraphLaunch", "cudaGraphLaunch_v10000_ptsz",
                                    "cuLaunchKernelEx"])
def test_a_kernel_or_graph_launch_without_a_device_record_still_fails(launch):
    events = [*cuda_round(), TraceEvent("cuda_runtime", launch, 100.0, 1.0, correlation=80)]
    with pytest.raises(counters.IncompleteProfile, match="1 of 4 kernel or graph launches"):
        count_round(events, source="cuda")


@pytest.mark.parametrize("name", ["cudaStreamSynchronize_ptsz", "cudaDeviceSynchronize_v3020", "cudaMemcpy_ptds",
                                  "cudaMemcpy2D_v3020_ptds", "cudaEventSynchronize_ptsz_v3020"])
def test_a_sync_with_a_suffix_counts(name):
    events = [*cuda_round(), TraceEvent("cuda_runtime", name, 399.0, 0.5, correlation=99)]
    assert count_round(events, source="cuda").syncs == 4


@pytest.mark.parametrize("name", ["cudaMemcpyAsync_ptsz", "cudaStreamSynchronizeX", "cudaMemcpy_vx", "cudaMemcpy_ptsd"])
def test_other_names_are_no_syncs(name):
    events = [*cuda_round(), TraceEvent("cuda_runtime", name, 399.0, 0.5, correlation=99)]
    assert count_round(events, source="cuda").syncs == 3


def test_call_names_lose_version_and_per_thread_suffixes_only():
    assert counters.call_name("cudaLaunchKernel_ptsz") == "cudaLaunchKernel"
    assert counters.call_name("cudaMemcpyAsync_v3020_ptsz") == "cudaMemcpyAsync"
    assert counters.call_name("cudaStreamGetCaptureInfo_v2") == "cudaStreamGetCaptureInfo"
    assert counters.call_name("cudaLaunchKernelExC_v11060") == "cudaLaunchKernelExC"
    assert counters.call_name("cudaptsz") == "cudaptsz"


def test_unnamed_calls_are_counted_apart_never_as_syncs_or_launches():
    """Older Kineto writes INVALID for a call it cannot name: the count says how many went unchecked."""
    unnamed = [TraceEvent("cuda_runtime", "INVALID", 100.0 + i, 0.5, correlation=80 + i) for i in range(2)]
    plain, more = count_round(cuda_round(), source="cuda"), count_round([*cuda_round(), *unnamed], source="cuda")
    assert (plain.unnamed_calls, more.unnamed_calls) == (0, 2)
    assert dataclasses.replace(more, unnamed_calls=0) == plain
    assert count_round([*cuda_round(), *unnamed], source="cpu").unnamed_calls == 0


def test_rounds_can_be_split_by_a_test_of_names():
    steps = [*cuda_round(t0=0.0, c0=0), *cuda_round(t0=1000.0, c0=100)]
    steps = [dataclasses.replace(e, name=f"ProfilerStep#{int(e.start_us) // 1000 + 7}") if e.name == ROUND_EVENT else e
             for e in steps]
    first, second = split_rounds(steps, annotation=lambda name: name.startswith("ProfilerStep#"))
    assert count_round(first, source="cuda") == count_round(second, source="cuda") == count_round(cuda_round(),
                                                                                                   source="cuda")
    assert split_rounds(steps, annotation="ProfilerStep#8", ignore_launched_outside=True)[0] == second


def test_work_launched_outside_the_windows_can_be_left_out_but_unlaunched_work_still_raises():
    outside = [TraceEvent("cuda_runtime", "cudaLaunchKernel", 5000.0, 1.0, correlation=4242),
               TraceEvent("kernel", "other_stage", 5001.0, 1.0, correlation=4242)]
    with pytest.raises(counters.IncompleteProfile, match="1 device records"):
        split_rounds([*cuda_round(), *outside])
    (events,) = split_rounds([*cuda_round(), *outside], ignore_launched_outside=True)
    assert count_round(events, source="cuda") == count_round(cuda_round(), source="cuda")
    unlaunched = TraceEvent("kernel", "stray", 5000.0, 1.0, correlation=4343)
    with pytest.raises(counters.IncompleteProfile, match="1 device records"):
        split_rounds([*cuda_round(), unlaunched], ignore_launched_outside=True)
