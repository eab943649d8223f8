"""bench.compare.forkserver: a forked worker that is busy when its coordinator is SIGKILLed dies at once, because it
has let go of the fork server's pipe (release_server); holding it, as every fork does by default, it lives on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.processes import alive, gone_within, linux_only
from tests.repo import REPO

DEADLINE_S = 3.0  # the busy child sleeps 120 s: only a signal ends it within this


def orphan(release: bool) -> int:
    """Start a coordinator with one busy forked child, SIGKILL the coordinator, return the child's pid."""
    coordinator = subprocess.Popen([sys.executable, "-m", "tests.compare.forked_sleeper", "release" if release else "hold"],
                                   cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(coordinator.stdout.readline())
    assert alive(child)
    time.sleep(0.5)  # past its setup, into the long request
    os.kill(coordinator.pid, signal.SIGKILL)
    coordinator.wait(timeout=30)  # not communicate(): a surviving child still holds the stdout pipe
    coordinator.stdout.close()
    return child


@pytest.mark.slow
@linux_only
def test_a_busy_forked_worker_dies_with_a_killed_coordinator():
    child = orphan(release=True)
    assert not gone_within([child], DEADLINE_S), "the busy worker outlived its killed coordinator"


@pytest.mark.slow
@linux_only
def test_the_negative_control_a_worker_holding_the_server_pipe_outlives_it():
    child = orphan(release=False)
    try:
        assert gone_within([child], DEADLINE_S) == [child], "the control did not hold the fork server alive"
    finally:
        os.kill(child, signal.SIGKILL)
