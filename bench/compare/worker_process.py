"""A worker process and its pipes, exec'd or forked: one request, one reply, with a deadline."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench.compare.forkserver import ForkedProcess
from bench.compare.protocol import (
    REPLIES,
    Bye,
    Quit,
    decode_message,
    encode_message,
)
from cosmos3.errors import InputError

# Protocol waits: building wan22 models (first CUDA context included) can take minutes.
START_TIMEOUT_S = 900.0
REPLY_TIMEOUT_S = 900.0
QUIT_TIMEOUT_S = 30.0
STDERR_TAIL_LINES = 25


class WorkerError(InputError):
    """A worker died, hung or broke the protocol; the message ends with its stderr."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class WorkerProcess:
    """A worker and its pipes: one request, one reply, with a deadline; its stderr goes to a log file.

    `proc` is a subprocess.Popen of `python -m bench.compare.worker` (exec) or a bench.compare.forkserver.ForkedProcess
    (fork): the part of Popen used here is all the two share.
    """

    def __init__(self, side: str, label: str, log: Path, start: Callable[[IO[bytes]], Any]) -> None:
        self.side = side
        self.label = label  # "base HEAD~1 (0123abcd)" / "head (working tree)": names the side in errors
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 -- the worker writes it for its whole life
        self.proc = start(self._log)
        self._buffer = b""
        self._pending = "nothing"  # the request being answered, to name it when the worker dies

    @classmethod
    def exec(cls, side: str, label: str, cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> WorkerProcess:
        """A fresh interpreter running `cmd`. Its own session: a Ctrl-C at the terminal reaches only the
        coordinator, which stops the workers in order; a killed coordinator still takes them down
        (die_with_parent)."""
        return cls(side, label, log, lambda stderr: subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=cwd, env=env,
            start_new_session=True))

    @classmethod
    def fork(cls, side: str, label: str, env: dict[str, str], shim: Path, head_root: Path, log: Path
             ) -> WorkerProcess:
        """bench.compare.worker forked from the preloaded server (bench.compare.forkserver), in its own session as well."""
        return cls(side, label, log, lambda _stderr: ForkedProcess(env, shim, head_root, log))

    def request(self, message: Any, expected: tuple[type, ...], timeout_s: float = REPLY_TIMEOUT_S) -> Any:
        self.send(message)
        return self.receive(expected, timeout_s)

    def send(self, message: Any) -> None:
        self._pending = type(message).__name__
        try:
            self.proc.stdin.write(encode_message(message).encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the pipe was closed
            raise self.died(f"died before answering {self._pending}") from None

    def receive(self, expected: tuple[type, ...], timeout_s: float) -> Any:
        reply = decode_message(self._readline(timeout_s).decode(errors="replace"), REPLIES,
                               source=f"{self.label} worker")
        if not isinstance(reply, expected):
            raise self.died(f"sent {type(reply).__name__} where {'/'.join(c.__name__ for c in expected)} was due",
                            stop=True)
        return reply

    def _readline(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.died(f"sent no reply to {self._pending} within {timeout_s:.0f} s", stop=True)
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise self.died(f"died before answering {self._pending}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def died(self, what: str, *, stop: bool = False) -> WorkerError:
        """The error for a worker that failed: how it ended and the end of its stderr."""
        if stop:
            self.stop()
        try:
            self.proc.wait(timeout=QUIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
        return WorkerError(self.label, f"worker {what} and {describe_exit(self.proc.returncode)}; "
                                       f"the end of its stderr:\n{self.stderr_tail()}")

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        # The worker writes the file itself; the coordinator's handle is closed once the worker is stopped
        # (a hang or a protocol error stops it before this reads the tail).
        text = self.log_path.read_text(errors="replace").rstrip().splitlines()
        return "\n".join(f"  | {line}" for line in text[-lines:]) or "  | (empty)"

    def quit(self) -> None:
        self.request(Quit(), (Bye,), QUIT_TIMEOUT_S)
        self.proc.stdin.close()
        self.proc.wait(timeout=QUIT_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=QUIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(BrokenPipeError):  # the worker is gone; nothing to flush to
                    pipe.close()
        if not self._log.closed:
            self._log.close()
