"""A run or a compare stopped by a signal: the signals that stop one, its exception and the one record it leaves."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from bench.records import write_json_atomic

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
