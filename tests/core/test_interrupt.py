"""bench.core.interrupt: what a run or a compare stopped by a signal raises and leaves (the processes: tests/cli/test_signals.py)."""

from __future__ import annotations

import json
import signal

from bench.core.interrupt import INTERRUPTED_RECORD, Interrupted, write_interrupted


def test_interrupted_names_its_signal():
    stop = Interrupted(signal.SIGTERM)
    assert stop.signum == signal.SIGTERM and str(stop) == "stopped by SIGTERM"


def test_the_record_says_which_signal_when_and_what_it_stopped(tmp_path):
    write_interrupted(tmp_path / "run", signal.SIGINT, "python -m bench run")
    (path,) = (tmp_path / "run").iterdir()
    assert path.name == INTERRUPTED_RECORD == "interrupted.json"
    record = json.loads(path.read_text())
    assert sorted(record) == ["argv", "date_utc", "interrupted_by"]
    assert record["interrupted_by"] == "SIGINT" and record["argv"] == "python -m bench run"
    assert record["date_utc"].endswith("Z") and len(record["date_utc"]) == len("2026-01-01T00:00:00Z")
