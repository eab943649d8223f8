"""Python's garbage collector kept out of the timed rounds, and its pauses timed where they are wanted.

A full (generation 2) collection walks every object the process holds: pytest's, torch's,
diffusers' and the models' own. It starts when enough allocations have piled up, so it lands in
whichever round crosses the threshold, and costs what the whole heap costs, not what the round's
code does. On the 2-core CPU runner it took 190-250 ms against 15 ms rounds: the third timed
round of every run of `vae_encode[64x48-1f]` with one warm-up round (`--rounds 1,5,5,1`) paid
for one (timed with `GcPauses`). A pause the size of the process's heap, landing where a counter
happens to overflow, is noise to a stage benchmark, not a cost of the stage.

So, as timeit does (it turns the collector off while it times) and as pytest-benchmark's
`--benchmark-disable-gc` does:

- `frozen_heap()` around a case's timed rounds: one full collection, then `gc.freeze()` moves every
  object alive then (models, modules, the test session) into the permanent generation, which no
  collection walks. They are unfrozen when the case ends.
- `no_collection()` around each timed round: no collection starts inside it. The round's own
  cyclic garbage is collected right after it, outside the timer: a young-generation collection,
  cheap because it walks only what was made since (the heap is frozen). Acyclic garbage, most of
  it, is freed by reference counting inside the round, as in any process.

What this leaves in the round is the stage's own cost, Python's reference counting included. What
it takes out is the collection of garbage cycles, whose cost belongs to the heap; the profiled
rounds and a serving process still pay it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from torch.profiler import record_function


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect everything once, then keep what is alive now out of every collection until the block ends.

    The collector's on/off state is restored on the way out, also when the block fails with a round
    still inside `no_collection`.
    """
    enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
        else:
            gc.disable()


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """No garbage collection inside the block; the young garbage it made is collected after it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect(0)


# The profiler range each collection gets under GcPauses(annotate=True), e.g. "python.gc.gen2".
GC_EVENT = "python.gc.gen"


@dataclass
class GcPauses:
    """Every garbage collection while the block runs: (start on time.perf_counter in s, ms, generation).

    A diagnostic (tools/e2e_stage_counters.py): where collections land, and what they cost. With
    `annotate`, each collection is also a torch.profiler range named GC_EVENT + its generation, so
    that a trace shows it inside the stage it stalled.
    """

    annotate: bool = False
    pauses: list[tuple[float, float, int]] = field(default_factory=list)

    def __enter__(self) -> Self:
        self._open: tuple[float, record_function | None] | None = None  # a collection under way
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            mark = record_function(f"{GC_EVENT}{info['generation']}") if self.annotate else None
            if mark is not None:
                mark.__enter__()
            self._open = (now, mark)
        elif self._open is not None:  # a stop whose start came before the block is not counted
            start, mark = self._open
            if mark is not None:
                mark.__exit__(None, None, None)
            self.pauses.append((start, (now - start) * 1e3, int(info["generation"])))
            self._open = None
