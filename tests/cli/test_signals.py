"""Stopping `python -m bench run` stops its benchmark child, and the run leaves only a record that says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import alive, children, linux_only
from tests.repo import REPO

pytestmark = pytest.mark.slow

# Long enough to be stopped mid-run: every latent_prep case gets 60 rounds.
LONG_RUN = ["--preset", "tiny", "--rounds", "1,60,60,1", "-k", "test_latent_prep"]
STARTUP_TIMEOUT_S = 120.0  # a loaded 2-core CI machine imports torch in the child slowly
EXIT_TIMEOUT_S = 60.0


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def start_run(tmp_path: Path, run_id: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", *LONG_RUN, "--run-id", run_id,
         "--results-dir", str(tmp_path), "--baselines-dir", str(tmp_path / "none")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    child = wait_for(lambda: children(proc.pid), STARTUP_TIMEOUT_S, "the benchmark child")[0]
    # Let the child get into its rounds (it writes nothing before pytest-benchmark's end).
    time.sleep(3)
    return proc, child


@linux_only
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_stops_its_child_and_says_so(tmp_path, signum):
    proc, child = start_run(tmp_path, "stopped")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    assert proc.returncode == 128 + signum, err[-2000:]
    wait_for(lambda: not alive(child), EXIT_TIMEOUT_S, "the child to exit")
    run_dir = tmp_path / "stopped"
    assert sorted(p.name for p in run_dir.iterdir()) == ["interrupted.json"]
    assert json.loads((run_dir / "interrupted.json").read_text())["interrupted_by"] == signal.Signals(signum).name
    assert f"stopped by {signal.Signals(signum).name}" in err
    # A stopped run cannot be gated into a verdict.
    gate = subprocess.run([sys.executable, "-m", "bench", "gate", str(run_dir)], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert gate.returncode == 2 and "was interrupted" in gate.stderr


@linux_only
def test_the_child_dies_with_its_parent(tmp_path):
    proc, child = start_run(tmp_path, "orphan")
    os.kill(proc.pid, signal.SIGKILL)  # no handler runs: only the kernel's parent-death signal is left
    proc.communicate(timeout=EXIT_TIMEOUT_S)
    wait_for(lambda: not alive(child), EXIT_TIMEOUT_S, "the orphaned child to exit")
    assert not (tmp_path / "orphan" / "run.json").exists()
