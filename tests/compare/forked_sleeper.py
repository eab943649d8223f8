"""A stand-in for a forked compare worker in the middle of a long request (tests/compare/test_forkserver.py): run as
the coordinator of one such child, which it reports on stdout, then sleeps until it is killed."""

from __future__ import annotations

import os
import sys
import time

from bench.compare import forkserver
from bench.measure.harness import die_with_parent


def busy_worker(release: bool) -> None:
    """What serve_forked does before it serves (or not, the negative control), then a long request."""
    if release:
        forkserver.release_server()
    os.setsid()
    die_with_parent(os.getppid())
    time.sleep(120)


if __name__ == "__main__":
    ctx = forkserver.context()
    child = ctx.Process(target=busy_worker, args=(sys.argv[1] == "release",), daemon=True)
    child.start()
    print(child.pid, flush=True)
    time.sleep(120)
