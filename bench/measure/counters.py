"""Work counters of one case from a few profiled rounds: kernel launches, copies, syncs, FLOPs, device time.

Wall time moves with runner noise (host contention shifts launch-bound cases by tens of percent
between processes); the work a round asks of the device does not. For fixed shapes the counts
below are identical round after round and process after process, so a change in them is a change
in the code, however noisy the timer. The profiled rounds run beside the timed rounds, never
inside them: the profiler slows every launch.

On CUDA the counts come from the device activity that torch.profiler (Kineto/CUPTI) records. On
the CPU (the tiny preset) there are no kernels; the aten ops the profiler records stand in for them.

Only `record_rounds` touches the profiler; reading its events (`trace_events`, `split_rounds`,
`count_round`, `combine_rounds`) is pure, so that the CUDA branch is tested on synthetic CUDA-like
events on a machine without a GPU.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from bench.core.records import COUNTS, SOURCES, KernelStat, WorkCounters
from cosmos3 import strict_json
from cosmos3.errors import InputError
from cosmos3.timing import synchronize

# Profiled rounds per case, whatever its round time, in the pytest benchmarks and compare's worker alike
# (bench.measure.harness.CaseRun): five against a one-run baseline's five let a one-sided rank test on device
# time reach p = 1/252 < 0.01, where three against three can never go below 1/20.
PROFILED_ROUNDS = 5
# Profiled rounds run and thrown away first, in the same profiler session: first-call work
# (cuDNN/cuBLAS heuristics, lazy module state, allocator growth) stays out of the counts, and so
# do the first device records of a session, which some Kineto versions drop (see record_rounds).
WARMUP_ROUNDS = 1
# top_kernels: the union of the TOP_KERNELS kernels with most launches and, on CUDA, the
# TOP_KERNELS with most device time.
TOP_KERNELS = 10

# Every profiled round runs inside a ROUND_EVENT annotation; it ends with a synchronisation
# inside a FENCE_EVENT annotation (so that the round's work is done, and recorded, before the
# next round), and runtime calls that start inside the fence are ours, not counted as syncs.
ROUND_EVENT = "cosmos3.counters.round"
FENCE_EVENT = "cosmos3.counters.fence"

# Chrome-trace categories ("cat") written by Kineto for the activities read here.
CAT_KERNEL = "kernel"  # a CUDA kernel executed on the device
CAT_MEMCPY = "gpu_memcpy"  # a copy executed by the device; args["bytes"]
CAT_MEMSET = "gpu_memset"  # a memset executed by the device; args["bytes"]
CAT_RUNTIME = "cuda_runtime"  # a CUDA runtime API call on the host (cudaLaunchKernel, cudaMemcpyAsync, ...)
CAT_DRIVER = "cuda_driver"  # a CUDA driver API call on the host (cuLaunchKernel: Triton kernels)
CAT_CPU_OP = "cpu_op"  # an aten (or other dispatcher) op on the host
CAT_ANNOTATION = "user_annotation"  # record_function on the host
# On the CPU nothing waits for a device; the op that reads a tensor's value back to the host (and
# on a GPU waits for it: `.item()`, `float(t)`, `if t:`) stands in for a synchronisation.
CPU_SYNC_OP = "aten::_local_scalar_dense"
# Device work: these durations make up device time. GPU user annotations ("gpu_user_annotation",
# record_function ranges projected onto the device timeline) and CUPTI sync records ("cuda_sync",
# e.g. "Context Sync") are spans, not work; do_bench_using_profiling skips them too.
_DEVICE_WORK = (CAT_KERNEL, CAT_MEMCPY, CAT_MEMSET)
_HOST_LAUNCHERS = (CAT_RUNTIME, CAT_DRIVER)
# Host calls each of which puts work on the device that CUPTI records (prefixes, so that
# cudaLaunchKernelExC, cuLaunchKernelEx and cudaMemcpyAsync are included).
_DEVICE_WORK_CALLS = ("cudaLaunchKernel", "cudaLaunchCooperativeKernel", "cuLaunchKernel", "cudaGraphLaunch",
                      "cuGraphLaunch", "cudaMemcpy", "cudaMemset", "cuMemcpy", "cuMemset")
# Of those, the copies and memsets: one of zero bytes enqueues nothing, so CUPTI has no device record
# to write (cuDNN's convolutions issue such cudaMemsetAsync calls, 0.3-1 us each, every round). The
# host record carries no byte count to tell them apart from a dropped record, so a copy or memset
# call without a device record is taken for an empty one and counted apart (RoundCounts.empty_copies).
_COPY_CALLS = ("cudaMemcpy", "cudaMemset", "cuMemcpy", "cuMemset")
# Kineto names runtime calls from its own cbid table (runtimeCbidName, src/cupti_strings.cpp: the
# version suffix dropped, _ptsz kept), and a cbid beyond the table of its build "INVALID" (the cbid
# stays in args; 409 in an A100 trace of 2023). Such a call could be a launch or a sync: it is neither
# checked for a device record nor counted as a sync, and RoundCounts.unnamed_calls says how many.
UNNAMED_CALL = "INVALID"

# Host calls that block until the device (or a stream, or an event) is done; cudaMemcpy (not
# ...Async) returns when its copy is done. torch's .item() and .cpu() go through cudaMemcpyAsync
# + cudaStreamSynchronize and count once, by the latter.
SYNC_CALLS = frozenset({
    "cudaDeviceSynchronize",
    "cudaStreamSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cudaMemcpy2D",
    "cudaMemcpy3D",
})
# Calls are matched without the suffixes of CUDA's name tables (as Kineto writes them): an API
# version (cudaMemcpy_v3020) and the per-thread default stream variants (cudaStreamSynchronize_ptsz,
# cudaMemcpy_ptds), in any combination (cudaLaunchKernel_ptsz, cudaMemcpyAsync_v3020_ptsz).
_CALL_SUFFIXES = re.compile(r"(?:_v\d+|_ptsz|_ptds)+$")
# Kineto names copies "Memcpy <kind> (<src memory> -> <dst memory>)", e.g. "Memcpy HtoD (Pageable -> Device)".
_MEMCPY_KIND = re.compile(r"^Memcpy (\w+)")
_H2D_KINDS = frozenset({"HtoD", "HtoA"})
_D2H_KINDS = frozenset({"DtoH", "AtoH"})

# --- events -> counts (pure) ------------------------------------------------------------------


def call_name(name: str) -> str:
    """A runtime or driver call's name without its version and per-thread-stream suffixes."""
    return _CALL_SUFFIXES.sub("", name)


class IncompleteProfile(RuntimeError):
    """The profiler's record of the rounds is missing work, so counts taken from it would be short."""


@dataclass(frozen=True)
class TraceEvent:
    """The parts of one Chrome-trace complete event ("ph": "X") that the counts are read from."""

    category: str  # "cat": kernel, gpu_memcpy, gpu_memset, cuda_runtime, cpu_op, user_annotation, ...
    name: str
    start_us: float
    duration_us: float
    nbytes: int = 0  # args["bytes"] of a gpu_memcpy / gpu_memset
    # args["correlation"]: CUPTI's id linking a host runtime/driver call to the device work it
    # launched; 0 where absent (CPU events).
    correlation: int = 0


def trace_events(trace: dict[str, Any]) -> list[TraceEvent]:
    """The complete events of an exported Chrome trace (prof.export_chrome_trace)."""
    out = []
    for event in trace["traceEvents"]:
        if event.get("ph") != "X" or "cat" not in event:
            continue  # metadata, flow arrows, instants
        args = event.get("args") or {}
        out.append(TraceEvent(event["cat"], event["name"], float(event["ts"]), float(event.get("dur", 0.0)),
                              int(args.get("bytes", 0)), int(args.get("correlation", 0))))
    return out


def split_rounds(
    events: Iterable[TraceEvent],
    annotation: str | Callable[[str], bool] = ROUND_EVENT,
    *,
    ignore_launched_outside: bool = False,
) -> list[list[TraceEvent]]:
    """The events of each `annotation` (by default each ROUND_EVENT), in order.

    `annotation` is a name, or a test of names (traces that number their windows, such as
    ProfilerStep#101, ProfilerStep#102: `lambda name: name.startswith("ProfilerStep#")`).

    Host events belong to the round whose annotation contains their start (one host clock).
    Device events belong to the round of the host call with the same correlation id, not to a
    time window: device timestamps are converted from the GPU clock, and Kineto has shipped
    versions where they drift from session to session (pytorch#175790, #192021). A device record
    whose launching call is not in the trace (Kineto keeps only some driver API calls) falls back
    to the round whose window contains its start; one in no round raises IncompleteProfile.

    With `ignore_launched_outside` (a trace where the windows are some of the work, e.g. one stage
    of a whole request), device records whose launching call is in the trace but outside every
    window are left out; one whose launching call is missing and in no window still raises.
    """
    events = list(events)
    is_window = (lambda name: name == annotation) if isinstance(annotation, str) else annotation
    windows = sorted((e.start_us, e.start_us + e.duration_us) for e in events
                     if e.category == CAT_ANNOTATION and is_window(e.name))

    def round_at(t_us: float) -> int | None:
        return next((i for i, (lo, hi) in enumerate(windows) if lo <= t_us <= hi), None)

    out: list[list[TraceEvent]] = [[] for _ in windows]
    host_round: dict[int, int | None] = {}
    device = []
    for e in events:
        if e.category in _DEVICE_WORK:
            device.append(e)
            continue
        index = round_at(e.start_us)
        if e.category in _HOST_LAUNCHERS and e.correlation:
            host_round[e.correlation] = index
        if index is not None:  # else profiler start-up or shut-down, between rounds
            out[index].append(e)
    stray = 0
    for e in device:
        launched_here = e.correlation in host_round
        index = host_round[e.correlation] if launched_here else round_at(e.start_us)
        if index is None and launched_here and ignore_launched_outside:
            continue  # work of a host call outside the windows: not theirs
        if index is None:
            stray += 1
        else:
            out[index].append(e)
    if stray:
        raise IncompleteProfile(
            f"{stray} device records (kernels, copies, memsets) belong to no profiled round: "
            "work launched outside the rounds"
        )
    return out


@dataclass(frozen=True)
class RoundCounts:
    """What one profiled round did. `kernels` holds every kernel (CUDA) or op (CPU), by name."""

    kernel_launches: int
    h2d_copies: int
    h2d_bytes: int
    d2h_copies: int
    d2h_bytes: int
    syncs: int
    device_ms: float | None  # None on CPU
    kernels: tuple[KernelStat, ...]
    # Copy and memset calls with no device record: empty ones, enqueuing nothing (see _COPY_CALLS).
    empty_copies: int = 0
    # Runtime calls the trace names UNNAMED_CALL: neither checked for device records nor counted as syncs.
    unnamed_calls: int = 0


def count_round(events: Iterable[TraceEvent], *, source: str) -> RoundCounts:
    """Count one round's events. `source` "cuda": kernels are device kernels; "cpu": aten ops.

    On CUDA, every kernel or graph launch must have its device record: the profiler can drop
    device records without saying so (pytorch#192021), and counts from such a round would be
    short. IncompleteProfile then. A copy or memset call without one is taken for an empty call
    (zero bytes enqueue nothing) and counted in `empty_copies`, not raised; calls named
    UNNAMED_CALL are counted in `unnamed_calls`.
    """
    if source not in SOURCES:
        raise InputError("source", f"must be one of {SOURCES}", source)
    events = list(events)
    fences = [(e.start_us, e.start_us + e.duration_us) for e in events
              if e.category == CAT_ANNOTATION and e.name == FENCE_EVENT]
    cuda = source == "cuda"
    kernel_category = CAT_KERNEL if cuda else CAT_CPU_OP
    launches: Counter[str] = Counter()
    kernel_us: defaultdict[str, float] = defaultdict(float)
    copies = {"h2d": [0, 0], "d2h": [0, 0]}  # direction -> [copies, bytes]
    device_us = 0.0
    syncs = 0
    launched: set[int] = set()  # correlation ids of host calls that must have device records
    copy_calls: set[int] = set()  # correlation ids of copy and memset calls, empty without device records
    recorded: set[int] = set()  # correlation ids of device records
    unnamed = 0
    for e in events:
        call = call_name(e.name)
        if e.category == kernel_category:
            launches[e.name] += 1
            kernel_us[e.name] += e.duration_us
        if cuda and e.category in _DEVICE_WORK:
            device_us += e.duration_us
            recorded.add(e.correlation)
        if e.category == CAT_MEMCPY:
            match = _MEMCPY_KIND.match(e.name)
            kind = match.group(1) if match else ""
            direction = "h2d" if kind in _H2D_KINDS else "d2h" if kind in _D2H_KINDS else None
            if direction:
                copies[direction][0] += 1
                copies[direction][1] += e.nbytes
        elif e.category in _HOST_LAUNCHERS:
            if call.startswith(_COPY_CALLS):
                copy_calls.add(e.correlation)
            elif call.startswith(_DEVICE_WORK_CALLS):
                launched.add(e.correlation)
            unnamed += call == UNNAMED_CALL
            ours = any(lo <= e.start_us <= hi for lo, hi in fences)
            if e.category == CAT_RUNTIME and call in SYNC_CALLS and not ours:
                syncs += 1
        if not cuda and e.category == CAT_CPU_OP and e.name == CPU_SYNC_OP:
            syncs += 1
    if cuda and launched - recorded:
        raise IncompleteProfile(
            f"{len(launched - recorded)} of {len(launched)} kernel or graph launches of a round have no "
            "device record: the profiler dropped them (see pytorch#192021), the counts would be short"
        )
    kernels = tuple(
        KernelStat(name, n, kernel_us[name] / 1e3 if cuda else None) for name, n in sorted(launches.items())
    )
    return RoundCounts(
        kernel_launches=sum(launches.values()),
        h2d_copies=copies["h2d"][0], h2d_bytes=copies["h2d"][1],
        d2h_copies=copies["d2h"][0], d2h_bytes=copies["d2h"][1],
        syncs=syncs,
        device_ms=device_us / 1e3 if cuda else None,
        kernels=kernels,
        empty_copies=len(copy_calls - recorded) if cuda else 0,
        unnamed_calls=unnamed if cuda else 0,
    )


def combine_rounds(rounds: Sequence[RoundCounts], *, source: str, flops: int) -> WorkCounters:
    """One WorkCounters from the rounds: counts are the per-round maximum, disagreements named."""
    if not rounds:
        raise InputError("rounds", "must hold at least one profiled round", 0)
    counts = {name: max(getattr(r, name) for r in rounds) for name in COUNTS}
    varying = [name for name in COUNTS if len({getattr(r, name) for r in rounds}) > 1]

    by_round = [{k.name: k for k in r.kernels} for r in rounds]
    if any({n: k.launches for n, k in d.items()} != {n: k.launches for n, k in by_round[0].items()}
           for d in by_round[1:]):
        varying.append("top_kernels")
    cuda = source == "cuda"
    stats = []
    for name in sorted(set().union(*by_round)):
        launches = max(d[name].launches if name in d else 0 for d in by_round)
        device_ms = float(np.median([d[name].device_ms if name in d else 0.0 for d in by_round])) if cuda else None
        stats.append(KernelStat(name, launches, device_ms))
    chosen = {k.name for k in sorted(stats, key=lambda k: (-k.launches, k.name))[:TOP_KERNELS]}
    if cuda:
        chosen |= {k.name for k in sorted(stats, key=lambda k: (-k.device_ms, k.name))[:TOP_KERNELS]}
    top = tuple(sorted((k for k in stats if k.name in chosen), key=lambda k: (-k.launches, k.name)))

    return WorkCounters(
        source=source,
        profiled_rounds=len(rounds),
        **counts,
        flops=flops,
        device_ms_samples=tuple(r.device_ms for r in rounds) if cuda else (),
        top_kernels=top,
        varying_counters=tuple(varying),
    )


# --- measurement --------------------------------------------------------------------------------


def flop_count(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn`, as FlopCounterMode counts them (matmuls, convolutions, attention)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def record_rounds(fn: Callable[[], Any], device: torch.device, n_rounds: int) -> list[TraceEvent]:
    """Run `fn` `n_rounds` times in ONE torch.profiler session; every round in a ROUND_EVENT annotation.

    One session, not one per round: Kineto re-registers its CUPTI timestamp callback at every
    session start, and in the k-th session of a process the first k kernel records can come back
    with timestamps outside the window and be dropped silently (pytorch#192021). In one session
    those head records fall in the warm-up rounds. The device is idle when the session starts,
    and each round ends with a synchronisation inside the round, so its work is all recorded.
    """
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with tempfile.TemporaryDirectory() as tmp:
        with profile(activities=activities) as prof:
            for _ in range(n_rounds):
                with record_function(ROUND_EVENT):
                    fn()
                    with record_function(FENCE_EVENT):
                        synchronize(device)
        # The Chrome trace is the profiler's stable, documented output, and the one that carries
        # the bytes and correlation id of each copy on every torch version this suite supports.
        path = os.path.join(tmp, "rounds.json")
        prof.export_chrome_trace(path)
        with open(path, "rb") as handle:  # json reads UTF-8 bytes whatever the locale
            trace = strict_json.loads(handle.read(), "profiler trace")
    return trace_events(trace)


def profile_rounds(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    rounds: int = PROFILED_ROUNDS,
    warmup_rounds: int = WARMUP_ROUNDS,
) -> WorkCounters:
    """Work counters of `fn` from `rounds` profiled rounds, after `warmup_rounds` profiled and
    thrown away, all in one profiler session; then one unprofiled round under FlopCounterMode.

    Call it outside the timed rounds: the profiler slows every launch. Raises IncompleteProfile
    where the profiler's record is missing work (see count_round and split_rounds).
    """
    device = torch.device(device)
    if device.type not in SOURCES:
        raise InputError("device", f"must be a {' or '.join(SOURCES)} device", str(device))
    if rounds < 1 or warmup_rounds < 0:
        raise InputError("rounds", "needs rounds >= 1 and warmup_rounds >= 0", (rounds, warmup_rounds))
    source = device.type
    per_round = split_rounds(record_rounds(fn, device, warmup_rounds + rounds))
    if len(per_round) != warmup_rounds + rounds:
        raise IncompleteProfile(f"the trace holds {len(per_round)} rounds, {warmup_rounds + rounds} ran")
    counted = per_round[warmup_rounds:]
    if source == "cuda" and any(not any(e.category in _DEVICE_WORK for e in r) for r in counted):
        # Zero kernels would read as a perfect speed-up; a CUDA case always launches some.
        raise IncompleteProfile(
            f"torch.profiler recorded no CUDA kernels, copies or memsets in a round on {device}; "
            "is CUPTI activity tracing available to this process?"
        )
    return combine_rounds([count_round(r, source=source) for r in counted], source=source, flops=flop_count(fn))
