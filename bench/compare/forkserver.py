"""Compare's workers forked from one server that has imported the heavy libraries once (hosts without a GPU).

A worker started as a fresh interpreter spends about 6 s of CPU importing torch, diffusers and transformers
before it builds a model: on a 2-core host, 16 of them took 57 s of a 120 s compare. Here multiprocessing's
forkserver imports PRELOAD once and every worker is a fork of it. What the forks share is those libraries'
code and its address layout, the same for head and base. Each worker still has its own pid, session, CPU
placement and threads (the server starts none before it forks), its own heap from then on, and its own
cosmos3 and bench, imported after the fork from its side's PYTHONPATH exactly as an exec'd worker does.

Never where CUDA may be used: CUDA cannot be used in a process forked from one that has initialised it,
and nothing promises that the libraries' imports leave it alone. With a GPU, workers start as fresh
interpreters (`python -m bench.compare.worker`), and compare.default_start picks that.

This module imports nothing of bench or cosmos3 at import time. A forked worker imports it (from the
coordinator's sys.path) to unpickle `serve_forked`, which then drops it and imports bench afresh from the
head's tree.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

# What the server imports before it forks: what bench.compare.worker and cosmos3 import that is not theirs.
# A name that cannot be imported is skipped (multiprocessing's rule); the worker then imports it itself.
PRELOAD = (
    "numpy",
    "scipy.stats",
    "torch",
    "diffusers",
    "diffusers.models.autoencoders.autoencoder_kl_wan",
    "diffusers.models.transformers",
    "diffusers.schedulers",
    "diffusers.pipelines.cosmos.pipeline_cosmos3_omni",
    "transformers",
)


def context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # read when the server starts: at this process's first fork
    return ctx


def release_server() -> None:
    """In a forked process: let go of the fork server's "alive" pipe.

    The server exits when it reads end of file on that pipe, once every holder of its write end is gone, and
    every fork inherits one (multiprocessing keeps it so that a child can fork in turn). A worker that held it
    would keep the server alive after a SIGKILLed coordinator, and so itself: its parent-death signal watches
    the server, and it would notice the dead coordinator only at its next request, after a round, a warm-up
    or a model build. Closed as the stdlib's own ForkServer closes it when it stops.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def serve_forked(requests: Connection, replies: Connection, env: dict[str, str], shim: str, head_root: str,
                 log: str) -> None:
    """In the forked worker: become what `python -m bench.compare.worker` would be (its own session, its side's
    environment, cwd and sys.path, stdout and stderr into its log), then serve the coordinator's requests."""
    release_server()
    os.setsid()  # as start_new_session does for an exec'd worker: a Ctrl-C reaches the coordinator only
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for std in (1, 2):  # a library's prints can never reach the protocol, which has its own pipe
        os.dup2(fd, std)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(shim)
    sys.path[:0] = [shim, head_root]  # as PYTHONPATH=shim:head puts them, ahead of the coordinator's
    if "cosmos3" in sys.modules:  # the server must not have imported the code under test
        raise RuntimeError(f"cosmos3 was imported before the fork, from {sys.modules['cosmos3'].__file__}")
    # This module came from the coordinator's sys.path, to unpickle this function; bench is the head's.
    for name in [m for m in sys.modules if m == "bench" or m.startswith("bench.")]:
        del sys.modules[name]
    inbox = os.fdopen(os.dup(requests.fileno()), "r", encoding="utf-8")
    outbox = os.fdopen(os.dup(replies.fileno()), "w", buffering=1, encoding="utf-8")
    requests.close()
    replies.close()
    from bench.compare import worker

    sys.exit(worker.serve_child(inbox, outbox))


class ForkedProcess:
    """A forked worker, with the part of subprocess.Popen that compare.WorkerProcess uses."""

    def __init__(self, env: dict[str, str], shim: Path, head_root: Path, log: Path) -> None:
        ctx = context()
        request_r, request_w = ctx.Pipe(duplex=False)
        reply_r, reply_w = ctx.Pipe(duplex=False)
        # daemon: a coordinator that exits with workers still alive terminates them, never waits on them.
        self._process = ctx.Process(target=serve_forked, name=f"bench-worker-{log.stem}", daemon=True,
                                    args=(request_r, reply_w, env, str(shim), str(head_root), str(log)))
        try:
            self._process.start()
        except BaseException:  # the server could not start, or died: no pipe is left open
            for end in (request_r, request_w, reply_r, reply_w):
                end.close()
            raise
        request_r.close()  # the worker's ends: closed here, so that its death reads as end of file
        reply_w.close()
        self.stdin = os.fdopen(os.dup(request_w.fileno()), "wb")
        self.stdout = os.fdopen(os.dup(reply_r.fileno()), "rb")
        request_w.close()
        reply_r.close()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode  # negative: killed by that signal, as Popen's

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout or 0.0)
        return self._process.exitcode

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()
