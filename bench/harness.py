"""Measures one benchmark case on pytest-benchmark: synchronised rounds, warm-up excluded, peak memory."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.records import matches
from cosmos3.errors import InputError
from cosmos3.timing import DeviceTimer, synchronize

# Negative controls, set by `python -m bench run --inject-slowdown / --revert-single-frame`
# and read inside the pytest process. They exist to prove that the gate can fail.
SLOWDOWN_ENV = "COSMOS3_BENCH_SLOWDOWN"  # "PATTERN=FRACTION[;PATTERN=FRACTION...]"
REVERT_ENV = "COSMOS3_BENCH_REVERT_SINGLE_FRAME"  # "1": single_frame cases run the old expand path
ROUNDS_ENV = "COSMOS3_BENCH_ROUNDS"  # "WARMUP,MIN,MAX,TARGET_MS" overrides the round policy

_GIB = 2**30


@dataclass(frozen=True)
class RoundPolicy:
    """How many rounds a case gets: enough for a stable median within a time budget per case.

    Like triton's do_bench, the warm-up rounds (never recorded) also estimate the round
    time; the number of timed rounds then fills `target_ms`, clamped to [min, max].
    MIN_ROUNDS is 5 because a one-sided Mann-Whitney test on 5 against 5 samples can
    reach p = 1/252 < 0.01; on 3 against 3 it never gets below 0.05.
    """

    warmup_rounds: int = 2
    min_rounds: int = 5
    max_rounds: int = 60
    target_ms: float = 2000.0

    def rounds_for(self, round_ms: float) -> int:
        wanted = math.ceil(self.target_ms / max(round_ms, 1e-3))
        return max(self.min_rounds, min(self.max_rounds, wanted))

    @classmethod
    def parse(cls, raw: str) -> RoundPolicy:
        """'WARMUP,MIN,MAX,TARGET_MS', e.g. '2,5,60,2000'."""
        try:
            warmup, lo, hi, target = raw.split(",")
            policy = cls(int(warmup), int(lo), int(hi), float(target))
        except ValueError:
            raise InputError("rounds", "must read WARMUP,MIN,MAX,TARGET_MS, e.g. 2,5,60,2000", raw) from None
        if policy.warmup_rounds < 1 or policy.min_rounds < 1 or policy.max_rounds < policy.min_rounds:
            raise InputError("rounds", "needs WARMUP >= 1 and 1 <= MIN <= MAX", raw)
        return policy

    @classmethod
    def from_env(cls, default: RoundPolicy | None = None) -> RoundPolicy:
        """The --rounds override when set (it applies to every case), else `default`."""
        raw = os.environ.get(ROUNDS_ENV)
        return cls.parse(raw) if raw else (default or cls())


def parse_slowdowns(raw: str | None) -> dict[str, float]:
    """'latent_prep[single_frame-*]=0.1' -> {pattern: 0.1}; fractions must be in (0, 10]."""
    out: dict[str, float] = {}
    for item in filter(None, (raw or "").split(";")):
        pattern, sep, value = item.rpartition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = float("nan")
        if not sep or not pattern or not (0 < fraction <= 10):
            raise InputError("inject_slowdown", "must read PATTERN=FRACTION with 0 < FRACTION <= 10", item)
        out[pattern] = fraction
    return out


def slowdown_for(case_name: str) -> float:
    """The injected slowdown fraction for a case (0 when no pattern matches)."""
    found = [f for p, f in parse_slowdowns(os.environ.get(SLOWDOWN_ENV)).items() if matches(case_name, p)]
    return max(found, default=0.0)


def revert_single_frame() -> bool:
    return os.environ.get(REVERT_ENV) == "1"


def active_negative_controls() -> tuple[str, ...]:
    controls = [f"slowdown {p}={f:g}" for p, f in parse_slowdowns(os.environ.get(SLOWDOWN_ENV)).items()]
    if revert_single_frame():
        controls.append("single_frame reverted to expand")
    return tuple(controls)


def seeded_image(width: int, height: int, device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    """A seeded random [1, 3, H, W] image in [-1, 1]: never time on zeros."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return (torch.rand(1, 3, height, width, generator=generator) * 2 - 1).to(device)


def record_spec(benchmark: Any, case: Any) -> None:
    """Attach the case spec; the run record is rebuilt from it, not from pytest's test id."""
    benchmark.group = case.benchmark
    benchmark.extra_info["spec"] = dataclasses.asdict(case)


def measure(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    device: torch.device,
    case_name: str,
    policy: RoundPolicy | None = None,
    on_round: Callable[[Any], None] | None = None,
) -> None:
    """Time `fn` with pytest-benchmark; every timed round ends when the device is idle.

    Samples land in pytest-benchmark's stats (raw data kept by --benchmark-json); peak and
    resident memory go to benchmark.extra_info. `on_round` sees each timed round's result
    (warm-up rounds excluded), e.g. to keep an end-to-end run's per-stage times.
    """
    policy = RoundPolicy.from_env(default=policy)
    slowdown = slowdown_for(case_name)
    warm_ms = []
    for _ in range(policy.warmup_rounds):
        with DeviceTimer(device) as timer:
            fn()
        warm_ms.append(timer.elapsed_ms)
    rounds = policy.rounds_for(min(warm_ms))

    def setup() -> None:
        synchronize(device)  # each round starts with nothing queued

    last: list[Any] = []

    def target() -> None:
        start = time.perf_counter()
        last[:] = [fn()]
        synchronize(device)
        if slowdown:
            time.sleep((time.perf_counter() - start) * slowdown)

    def teardown() -> None:  # outside the timed region
        if on_round is not None:
            on_round(last[0])

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=rounds, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update(
        warmup_ms=warm_ms,
        peak_mem_gib=torch.cuda.max_memory_allocated(device) / _GIB if cuda else None,
        resident_mem_gib=resident / _GIB if cuda else None,
        injected_slowdown=slowdown or None,
    )
