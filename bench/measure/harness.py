"""Measures one benchmark case on pytest-benchmark: synchronised rounds, warm-up excluded, peak memory.

The round policy and the run controls are bench.measure.controls's (torch-free); they are re-exported here, where
they lived before.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.core import telemetry
from bench.core.records import CASE_INFO_FIELDS, CaseSpec, EquivalenceRecord, encode_record
from bench.measure import collector
from bench.measure.controls import CONTROLS_ENV, MAX_INJECTED_FRACTION, MIN_ROUNDS, RoundPolicy, RunControls  # noqa: F401
from bench.measure.counters import PROFILED_ROUNDS, profile_rounds
from cosmos3.equivalence import check_against_oracle, check_encode_equivalence, fp32_oracle
from cosmos3.timing import DeviceTimer, synchronize

_GIB = 2**30
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@functools.cache
def _sleep_cycles_per_ms(device: torch.device) -> float:
    """How many cycles of torch.cuda._sleep take a millisecond on this GPU (calibrated once per process)."""
    cycles = 10_000_000
    torch.cuda._sleep(1_000)  # the first launch loads the kernel
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    torch.cuda.synchronize(device)
    return cycles / start.elapsed_time(end)


# Lines marked "no mutate block -- CUDA only" run on a GPU and nowhere else: the CPU tests cannot
# reach them, so mutation testing (nox -s mutants) skips them. Their tests are the GPU negative controls
# of tools/gpu-evidence.sh, where --inject-sync, --inject-kernel and --inject-gpu-work must fail the gate.


def _busy(device: torch.device, ms: float) -> None:
    """Occupy the device (CUDA: one spinning kernel) or, on the CPU, the host for `ms`."""
    if device.type == "cuda":  # pragma: no mutate block -- CUDA only
        torch.cuda._sleep(int(ms * _sleep_cycles_per_ms(device)))
        return
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def inject(fn: Callable[[], Any], case_name: str, device: torch.device, controls: RunControls,
           round_ms: float) -> tuple[Callable[[], Any], tuple[str, ...]]:
    """`fn` with this case's injected work inside it (timed and profiled alike), and their labels.

    GPU work is sized to a fraction of the case's device time, measured here once from a profiled
    round of `fn` (on the CPU, of `round_ms`, its round time). The extra kernel is one in-place
    negation of a scalar; the extra sync waits for the device's stream (on the CPU, `.item()`, whose
    aten::_local_scalar_dense the CPU counters count as a sync).
    """
    fraction, sync, kernel = controls.gpu_work_for(case_name), controls.sync_for(case_name), controls.kernel_for(case_name)
    if not (fraction or sync or kernel):
        return fn, ()
    busy_ms = 0.0
    if fraction:
        base_ms = round_ms
        if device.type == "cuda":  # pragma: no mutate block -- CUDA only
            base_ms = profile_rounds(fn, device, rounds=1).device_ms
        busy_ms = fraction * base_ms
    probe = torch.zeros((), device=device)  # pragma: no mutate -- CUDA only (on the CPU every device is the CPU)

    def injected() -> Any:
        out = fn()
        if kernel:
            probe.neg_()
        if busy_ms:
            _busy(device, busy_ms)
        if sync:
            if device.type == "cuda":  # pragma: no mutate block -- CUDA only
                torch.cuda.current_stream(device).synchronize()
            else:
                probe.item()
        return out

    labels = ((f"gpu work {fraction:g} ({busy_ms:.3f} ms)",) if fraction else ()) + (
        ("extra sync",) if sync else ()) + (("extra kernel",) if kernel else ())
    return injected, labels


# On the CPU (the tiny smoke preset, never a benchmark figure) torch runs one thread: its OpenMP
# pool spins on cores that other processes share, and on a loaded 2-core runner that made a 14 ms
# round take 360 ms, in bursts. One thread keeps the in-run checks' ratios meaningful there.
CPU_THREADS = 1


def single_thread_on_cpu(device: torch.device) -> None:
    """In a benchmark process on the CPU: torch on CPU_THREADS threads (see there why)."""
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)


def die_with_parent(parent_pid: int) -> None:
    """In the benchmark child: exit on SIGTERM when `parent_pid` dies, however it dies (Linux prctl).

    Without it a killed `python -m bench` would leave the child measuring, holding the GPU under
    the next job, and writing results nobody reads.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's signal handlers still stop the child
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def seeded_image(width: int, height: int, device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    """A seeded random [1, 3, H, W] image in [-1, 1]: never time on zeros."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 3, height, width, generator=generator) * 2 - 1).to(device)


def agreement_record(compared: Sequence[Any], *, rtol: float, reference: str) -> EquivalenceRecord:
    """The record of tensors compared with a reference path (cosmos3.equivalence.Agreement each): equivalent
    when every one is within the tolerance, bitwise when every one is identical, and its worst errors."""
    return EquivalenceRecord(
        equivalent=all(a.within_tolerance for a in compared),
        bitwise=all(a.bitwise for a in compared),
        max_abs_err=max(a.max_abs_err for a in compared),
        max_rel_err=max(a.max_rel_err for a in compared),
        reference=reference,
        rule=f"bitwise, else normwise relative error <= {rtol:g}",
    )


def equivalence_record(report: Any) -> EquivalenceRecord:
    """The record of a cosmos3.equivalence.EquivalenceReport: its verdicts and its worst tensor."""
    return agreement_record((report.frame0, report.image_latent, report.latents), rtol=report.rtol,
                            reference="expand")


def equivalence_for(vae: Any, req: Any, label: str | None, strategy: str | None, dtype: torch.dtype
                    ) -> EquivalenceRecord | None:
    """The equivalence check of a case labelled `label` that ran `strategy`, outside the timed rounds.

    single_frame against expand on the same request: bitwise, else within one bf16 ulp.
    first_frame_2d (another order of rounding) against an fp32 oracle of the same weights, judged by
    the error of the 3D single_frame path against that oracle. Other strategies have no check.
    """
    if label == "single_frame":
        return equivalence_record(check_encode_equivalence(vae, req, dtype=dtype))
    if label == "first_frame_2d":
        oracle = fp32_oracle(vae)
        try:
            report = check_against_oracle(oracle, vae, req, strategy, dtype=dtype)
        finally:
            del oracle
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the fp32 copy must not stay resident under later cases
        return EquivalenceRecord(**report.record_fields())
    return None


def diffusers_equivalence_for(pipe: Any, image: Any, case: CaseSpec, encode: str, *, device: torch.device,
                              dtype: torch.dtype) -> EquivalenceRecord | None:
    """The equivalence check of a diffusers_prepare_latents case labelled single_frame that ran `encode`, outside
    the timed rounds: diffusers' prepare_latents with that encode against it as shipped, on the same image,
    size and seed (cosmos3.diffusers_omni.check_equivalence). The shipped cases have no check."""
    if case.strategy != "single_frame":
        return None
    from cosmos3 import diffusers_omni

    report = diffusers_omni.check_equivalence(pipe, image, num_frames=case.num_frames, height=case.height,
                                              width=case.width, device=device, dtype=dtype, encode=encode)
    return agreement_record(report.compared, rtol=report.rtol, reference=diffusers_omni.SHIPPED)


def smooth_image(width: int, height: int, device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    """A photo-like [1, 3, H, W] image in [-1, 1]: a colour gradient plus a few soft gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(-1, 1, height).view(height, 1)
    x = torch.linspace(-1, 1, width)  # [W] against y's [H, 1]: broadcasts to [H, W]
    channels = []
    for _ in range(3):
        a, b = (torch.rand(2, generator=g) * 2 - 1).tolist()
        v = 0.5 * (a * x + b * y)
        for _ in range(4):
            cy, cx, size, amp = torch.rand(4, generator=g).tolist()
            r2 = (y - (2 * cy - 1)) ** 2 + (x - (2 * cx - 1)) ** 2
            v = v + (1.2 * amp - 0.6) * torch.exp(-r2 / (2 * (0.1 + 0.3 * size) ** 2))
        channels.append(v)
    return torch.stack(channels).clamp(-1, 1).unsqueeze(0).to(device)


def record_case(benchmark: Any, **fields: Any) -> None:
    """Keep CaseResult fields of this case in pytest-benchmark's extra_info, typed and named once.

    The run record is rebuilt from these by the same decoder that reads run.json, so a name
    that CaseResult lacks fails here, in the benchmark, not silently later.
    """
    unknown = sorted(set(fields) - CASE_INFO_FIELDS)
    if unknown:
        raise TypeError(f"record_case: {unknown} are not CaseResult fields ({sorted(CASE_INFO_FIELDS)})")
    if "spec" in fields:
        benchmark.group = fields["spec"].benchmark
    benchmark.extra_info.update({name: encode_record(value) for name, value in fields.items()})


class CaseRun:
    """One case being measured: THE measuring loop, shared by the pytest benchmarks and compare's worker.

    `start` runs the warm-up rounds (the collector as it is, never recorded), wraps `fn` in the case's
    negative controls (bench.measure.harness.inject), freezes the heap out of garbage collection and notes the
    memory resident on the device. Each timed round is three phases, so that pytest-benchmark (which
    times `body` itself) and the worker (`timed_round`) run the same code:

    - `before_round`: nothing queued on the device, the collector off (bench.measure.collector);
    - `body`: the round itself; it ends when the device is idle, and an injected slowdown sleeps its
      fraction of the round's own time inside it;
    - `after_round`: the round's garbage collected, `on_round` shown its result, outside the timing.

    `finish` reads the GPU's state, releases the heap, runs the profiled rounds and returns the CaseResult
    fields measured beside the timed rounds; `close` releases the heap without measuring (a failed case).
    """

    def __init__(self, fn: Callable[[], Any], *, device: torch.device, case_name: str, controls: RunControls,
                 policy: RoundPolicy | None = None, warmup_rounds: int | None = None,
                 on_round: Callable[[Any], None] | None = None, profile: bool = True) -> None:
        self.device = torch.device(device)
        self.case_name = case_name
        self.policy = controls.rounds or policy or RoundPolicy()
        self.on_round = on_round
        self.profile = profile
        self.slowdown = controls.slowdown_for(case_name)
        warm_ms = []
        for _ in range(warmup_rounds or self.policy.warmup_rounds):
            with DeviceTimer(self.device) as timer:
                fn()
            warm_ms.append(timer.elapsed_ms)
        self.warmup_ms = tuple(warm_ms)
        self.work, injected = inject(fn, case_name, self.device, controls, min(warm_ms))
        if injected:
            self.work()  # the injected kernels are warm too
        self.injected = ((f"slowdown {self.slowdown:g}",) if self.slowdown else ()) + injected
        self.rounds = self.policy.rounds_for(min(warm_ms))  # what the pytest benchmarks run
        self._resident_gib = None
        if self.device.type == "cuda":  # pragma: no mutate block -- CUDA only
            torch.cuda.reset_peak_memory_stats(self.device)
            self._resident_gib = torch.cuda.memory_allocated(self.device) / _GIB
        # The GPU's state (clocks, temperature, power, throttling) just before the timed rounds and just after
        # them (NVML, bench.core.telemetry; None off CUDA): never read inside a round.
        self.gpu_before = telemetry.read_device(self.device)
        self._held = contextlib.ExitStack()  # the frozen heap, until finish or close
        self._held.enter_context(collector.frozen_heap())
        self._round_gc = contextlib.ExitStack()

    def before_round(self) -> None:
        synchronize(self.device)  # each round starts with nothing queued
        self._round_gc.enter_context(collector.no_collection())

    def body(self) -> Any:
        start = time.perf_counter()
        out = self.work()
        synchronize(self.device)
        if self.slowdown:
            time.sleep((time.perf_counter() - start) * self.slowdown)
        return out

    def after_round(self, out: Any) -> None:
        self._round_gc.close()  # collects the round's garbage
        if self.on_round is not None:
            self.on_round(out)

    def timed_round(self) -> tuple[float, Any]:
        """One round outside pytest-benchmark, timed around `body` alone: (ms, its result)."""
        self.before_round()
        try:
            start = time.perf_counter()
            out = self.body()
            elapsed_ms = (time.perf_counter() - start) * 1e3
        except BaseException:
            self._round_gc.close()
            raise
        self.after_round(out)
        return elapsed_ms, out

    def close(self) -> None:
        """The collector as it was before the case (idempotent)."""
        self._round_gc.close()
        self._held.close()

    def finish(self) -> dict[str, Any]:
        """The CaseResult fields measured beside the timed rounds: warm-up, memory, controls, GPU state, counters."""
        gpu_after = telemetry.read_device(self.device)
        self.close()
        peak = None
        if self.device.type == "cuda":  # pragma: no mutate block -- CUDA only
            peak = torch.cuda.max_memory_allocated(self.device) / _GIB
        counters = profile_rounds(self.work, self.device, rounds=PROFILED_ROUNDS) if self.profile else None
        return {
            "warmup_ms": self.warmup_ms,
            "peak_mem_gib": peak,  # pragma: no mutate -- None on a CPU (set in the CUDA block above)
            "resident_mem_gib": self._resident_gib,  # pragma: no mutate -- None on a CPU
            "injected": self.injected,
            "counters": counters,
            "gpu_before": self.gpu_before,
            "gpu_after": gpu_after,
        }


def measure(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    device: torch.device,
    case_name: str,
    policy: RoundPolicy | None = None,
    on_round: Callable[[Any], None] | None = None,
    profile: bool = True,
) -> None:
    """Time `fn` with pytest-benchmark through CaseRun's rounds; record what was measured beside them.

    Samples land in pytest-benchmark's stats (raw data kept by --benchmark-json); warm-up times,
    peak and resident memory, the work counters of profiled rounds run after the timed ones
    (`profile`), and any injected control are recorded with record_case. `on_round` sees each
    timed round's result (warm-up rounds excluded), e.g. to keep per-stage times.
    """
    run = CaseRun(fn, device=device, case_name=case_name, controls=RunControls.from_env(), policy=policy,
                  on_round=on_round, profile=profile)
    last: list[Any] = []
    try:
        benchmark.pedantic(lambda: last.__setitem__(slice(None), [run.body()]), setup=run.before_round,
                           teardown=lambda: run.after_round(last[0]), rounds=run.rounds, warmup_rounds=0,
                           iterations=1)
    finally:
        run.close()  # a round that fails leaves the collector as it was
    record_case(benchmark, **run.finish())


def benchmark_case(benchmark: Any, spec: CaseSpec, work: Any, *, device: torch.device) -> None:
    """A pytest benchmark of one case: its bench.measure.workloads.Workload measured, its record kept, and the
    optimisation's equivalence checked on the same request, outside the timed rounds."""
    record_case(benchmark, spec=spec)
    measure(benchmark, work.fn, device=device, case_name=spec.name, policy=work.policy, on_round=work.on_round,
            profile=work.profile)
    record_case(benchmark, **work.result_fields())
    equivalence = work.equivalence()
    if equivalence is not None:
        record_case(benchmark, equivalence=equivalence)
