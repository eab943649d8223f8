"""The coordinator's side of a compare worker, in process, against stub workers that answer, die, hang,
or break the protocol: each failure must end in a WorkerError that says how the worker ended and shows the
end of its stderr (the slow tests in test_compare.py drive real workers)."""

from __future__ import annotations

import signal
import sys
import textwrap

import pytest

from bench.compare.protocol import Bye, Quit
from bench.compare.worker_process import STDERR_TAIL_LINES, WorkerError, WorkerProcess, describe_exit
from cosmos3.errors import InputError

LABEL = "head (working tree)"


def worker(tmp_path, body: str) -> WorkerProcess:
    """A stub worker: `body` runs after it has read one request line."""
    script = "import sys, time\nrequest = sys.stdin.readline()\n" + textwrap.dedent(body)
    return WorkerProcess.exec("head", LABEL, [sys.executable, "-c", script], env={}, cwd=tmp_path,
                             log=tmp_path / "worker.log")


def test_a_reply_in_pieces_is_read_whole_and_quit_ends_the_worker(tmp_path):
    w = worker(tmp_path, """
        sys.stdout.write('{"type": "Bye", '); sys.stdout.flush(); time.sleep(0.2)
        sys.stdout.write('"body": {"pid": 7}}\\n'); sys.stdout.flush()
        sys.stdin.read()
    """)
    w.quit()
    assert w.proc.returncode == 0
    w.stop()  # safe after the worker is gone, and twice
    w.stop()


WRONG_KIND = """
sys.stdout.write('{"type": "RoundDone", "body": {"case": "x", "ms": 1.0}}\\n'); sys.stdout.flush()
sys.stdin.read()
"""


@pytest.mark.parametrize(("body", "timeout_s", "message", "returncode"), [
    pytest.param("print('Traceback: boom', file=sys.stderr)\nsys.exit(3)\n", 10,
                 "died before answering Quit and exited with status 3; the end of its stderr:\n  | Traceback: boom",
                 3, id="dies"),
    pytest.param("print('still thinking', file=sys.stderr, flush=True)\ntime.sleep(60)\n", 1,
                 "sent no reply to Quit within 1 s and was killed by SIGTERM; the end of its stderr:\n"
                 "  | still thinking", -signal.SIGTERM, id="hangs"),
    pytest.param(WRONG_KIND, 10,
                 "sent RoundDone where Bye was due and was killed by SIGTERM; the end of its stderr:\n  | (empty)",
                 -signal.SIGTERM, id="wrong-kind"),
])
def test_a_failed_worker_is_named_with_how_it_ended_and_its_stderr(tmp_path, body, timeout_s, message, returncode):
    """A hang or a wrong reply stops the worker first (before the fix, reading its stderr then raised
    'ValueError: flush of closed file' instead)."""
    w = worker(tmp_path, body)
    with pytest.raises(WorkerError) as err:
        w.request(Quit(), (Bye,), timeout_s=timeout_s)
    assert str(err.value) == f"{LABEL}: worker {message}"
    assert w.proc.returncode == returncode


def test_a_line_that_is_not_a_message_is_a_protocol_error(tmp_path):
    w = worker(tmp_path, "print('loading weights...', flush=True)\nsys.stdin.read()\n")
    with pytest.raises(InputError) as err:
        w.request(Quit(), (Bye,), timeout_s=10)
    assert str(err.value).startswith(f"{LABEL} worker: must send one JSON message per line (")
    w.stop()
    assert w.proc.returncode == -signal.SIGTERM


def test_writing_to_a_dead_worker_names_the_request(tmp_path):
    w = worker(tmp_path, "sys.exit(0)\n")
    w.proc.stdin.write(b"\n")  # its one line: it exits
    w.proc.stdin.flush()
    w.proc.wait(timeout=10)
    with pytest.raises(WorkerError, match=r"worker died before answering Quit and exited with status 0"):
        for _ in range(100):  # the pipe's buffer may take a few writes before it reports the reader gone
            w.send(Quit())


def test_the_stderr_tail_keeps_the_last_lines(tmp_path):
    w = worker(tmp_path, "for i in range(40): print(f'line {i}', file=sys.stderr)\nsys.exit(1)\n")
    with pytest.raises(WorkerError) as err:
        w.request(Quit(), (Bye,), timeout_s=10)
    tail = str(err.value).split("the end of its stderr:\n")[1].splitlines()
    assert len(tail) == STDERR_TAIL_LINES == 25
    assert tail[0] == "  | line 15" and tail[-1] == "  | line 39"


@pytest.mark.parametrize(("code", "said"), [(None, "is still running"), (0, "exited with status 0"),
                                            (-9, "was killed by SIGKILL"), (-15, "was killed by SIGTERM")])
def test_describe_exit(code, said):
    assert describe_exit(code) == said
