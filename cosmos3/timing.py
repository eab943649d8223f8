"""Wall-clock timing of a region: device-synchronised (the region ends when the GPU is done with it), or
as upstream's stage timers record it, on the host alone.

    with stage_timer("device", device) as t: ...   # t.elapsed_ms
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Self

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for all queued work on `device` (a no-op on the CPU, whose work is synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class DeviceTimer:
    """Context manager: synchronise, start the clock, run the block, synchronise, stop the clock.

    CUDA kernels run asynchronously; without the synchronisations a stage's GPU work would be
    charged to whichever later stage first waits for it (the flaw of upstream's stage timers).
    """

    device: torch.device
    elapsed_ms: float = float("nan")

    def __enter__(self) -> Self:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.elapsed_ms = (time.perf_counter() - self._start) * 1e3


@dataclass
class HostTimer:
    """Context manager: the wall clock around the block and nothing else, as sglang's per-stage timers
    record a stage. The block's queued GPU work is not waited for, so it is charged to the first later
    region that waits (a sync, a copy to the host, a full queue); a region that only enqueues looks free.
    For comparing with upstream's figures, never as this suite's own measure."""

    device: torch.device
    elapsed_ms: float = float("nan")

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed_ms = (time.perf_counter() - self._start) * 1e3


STAGE_TIMERS = {"device": DeviceTimer, "host": HostTimer}


def stage_timer(kind: str, device: torch.device) -> DeviceTimer | HostTimer:
    """A timer of `kind` ("device": synchronised; "host": upstream's, unsynchronised) for `device`."""
    if kind not in STAGE_TIMERS:
        from cosmos3.errors import InputError

        raise InputError("stage_timer", f"must be one of {sorted(STAGE_TIMERS)}", kind)
    return STAGE_TIMERS[kind](torch.device(device))
