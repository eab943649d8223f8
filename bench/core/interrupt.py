"""A run or a compare stopped by a signal: the signals that stop one, its exception and the one record it leaves."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from bench.core.records import write_json_atomic

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
INTERRUPTED_RECORD = "interrupted.json"  # all a stopped run or compare leaves in its run folder


class Interrupted(Exception):
    """The run or compare was stopped by a signal; it has left only interrupted.json."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def write_interrupted(run_dir: Path, signum: int, argv: str) -> None:
    """INTERRUPTED_RECORD in `run_dir`: the signal, the time and the command that it stopped."""
    write_json_atomic(run_dir / INTERRUPTED_RECORD, {
        "interrupted_by": signal.Signals(signum).name,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": argv,
    })


@contextlib.contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Cleanup that a second Ctrl-C must not cut short: stop signals are noted, then re-raised after."""
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in STOP_SIGNALS}
    try:
        yield pending
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted, so every `finally` below runs (and the workers and the
    worktree are gone when it reaches the caller)."""

    def stop(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
