"""Device-synchronised wall-clock timing: a timed region ends when the GPU is done with it."""

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
