"""One side of `python -m bench compare`: imports its tree's cosmos3, builds the models once, measures on request.

Started by bench.compare with PYTHONPATH = [a folder holding only `cosmos3 -> <tree>/cosmos3`,
the head's repository], so `bench` (harness, workloads, grid) is the head's on both sides and
only the code under test comes from the side's tree. It reads one request per line on stdin and
writes one reply per line (bench.compare.protocol); everything else it prints goes to stderr, which the
coordinator keeps and shows when the worker dies.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

import bench
import cosmos3
from bench.compare.protocol import (
    REQUESTS,
    Bye,
    Finish,
    Finished,
    Prepare,
    Prepared,
    Quit,
    Ready,
    Round,
    RoundDone,
    Start,
    Unavailable,
    decode_message,
    encode_message,
)
from bench.core import cases
from bench.core.environment import collect_environment, run_label
from bench.core.records import CaseResult, CaseSpec
from bench.measure import workloads
from bench.measure.harness import CaseRun, die_with_parent, single_thread_on_cpu
from cosmos3.presets import get_preset

# Lines of a case's traceback kept in an Unavailable reply (the whole one goes to stderr).
TRACEBACK_TAIL_LINES = 6


class ProtocolError(RuntimeError):
    """The coordinator asked for something out of order: a bug, so the worker stops (exit 1)."""


def log(side: str, message: str) -> None:
    print(f"worker {side}: {message}", file=sys.stderr, flush=True)


def under(path: str | Path, root: str | Path) -> bool:
    """Whether `path` lies inside `root`, symlinks resolved."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def describe(exc: BaseException) -> str:
    """The exception and the last lines of its traceback: what a report needs to say why."""
    lines = traceback.format_exception(exc)
    tail = "".join(lines[-TRACEBACK_TAIL_LINES:]).strip()
    return f"{type(exc).__name__}: {exc}\n{tail}"


@dataclass
class _Prepared:
    """The case being measured: its workload, its run (bench.measure.harness.CaseRun), and its samples so far."""

    spec: CaseSpec
    work: workloads.Workload
    run: CaseRun
    samples_ms: list[float] = field(default_factory=list)


class Worker:
    """The models of one side, built once, and the case being measured."""

    def __init__(self, start: Start) -> None:
        self.start = start
        self.side = start.side
        # The whole point of a side: cosmos3 from its tree, bench from the head's. Checked, not assumed.
        if not under(cosmos3.__file__, start.tree):
            raise RuntimeError(f"cosmos3 was imported from {cosmos3.__file__}, not from {start.tree}")
        preset = get_preset(start.preset, dit_num_layers=start.dit_layers)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        single_thread_on_cpu(self.device)  # as the pytest benchmarks do
        # In the working folder, which the coordinator made inside its own scratch folder: removed with it
        # even where this process is stopped by a signal and cannot clean up.
        self._scratch = tempfile.TemporaryDirectory(prefix=f"worker-{self.side}-", dir=os.getcwd())
        weights = Path(start.weights_dir) if start.weights_dir else None
        self.models = workloads.Models(preset, self.device, cases.grid_for(preset.name), Path(self._scratch.name),
                                       weights_dir=weights)
        self.models.vae  # noqa: B018 -- built now, once, before any case is timed
        self.environment = collect_environment(self.device, run_label(preset.name, start.dit_layers), preset.dtype,
                                               start.controls.active)
        # From a case's warm-up to its end it holds the heap frozen out of garbage collection, and its
        # rounds run with none (bench.measure.collector), as the pytest benchmarks' rounds do: one CaseRun.
        self.current: _Prepared | None = None
        log(self.side, f"cosmos3 from {os.path.realpath(cosmos3.__file__)}, bench from "
                       f"{os.path.realpath(bench.__file__)}, {self.environment.device_name}, preset {preset.name}")

    def ready(self) -> Ready:
        return Ready(
            side=self.side,
            pid=os.getpid(),
            tree=self.start.tree,
            cosmos3_file=os.path.realpath(cosmos3.__file__),
            bench_file=os.path.realpath(bench.__file__),
            environment=self.environment,
            cases=tuple(cases.all_cases(self.models.preset.name)),
        )

    def close(self) -> None:
        self._release()
        self._scratch.cleanup()

    def _release(self) -> None:
        """No case prepared: its heap unfrozen."""
        if self.current is not None:
            self.current.run.close()
        self.current = None

    # ---- requests ----

    def prepare(self, request: Prepare) -> Prepared | Unavailable:
        """Build the case's workload and start its CaseRun: warm-up, negative controls (the head's only)."""
        spec = request.case
        self._release()
        try:
            work = workloads.build(spec, self.models, self.start.controls)
            run = CaseRun(work.fn, device=self.device, case_name=spec.name, controls=self.start.controls,
                          policy=work.policy, warmup_rounds=request.warmup_rounds, on_round=work.on_round,
                          profile=work.profile)
        # Not swallowed: the error and its traceback go to the coordinator, which reports the case as not
        # comparable (base) or failed (head), and to stderr; whatever a base lacks, it surfaces here.
        except Exception as exc:  # noqa: BLE001
            return self._unavailable(spec.name, exc)
        self.current = _Prepared(spec, work, run)
        log(self.side, f"{spec.name}: warm-up {', '.join(f'{ms:.2f}' for ms in run.warmup_ms)} ms"
                       + (f"; injected: {', '.join(run.injected)}" if run.injected else ""))
        return Prepared(spec.name, run.warmup_ms)

    def round(self, request: Round) -> RoundDone | Unavailable:
        current = self._expect(request.case)
        try:
            ms, _ = current.run.timed_round()
        except Exception as exc:  # noqa: BLE001 -- reported, as in prepare
            self._release()
            return self._unavailable(request.case, exc)
        current.samples_ms.append(ms)
        return RoundDone(request.case, ms)

    def finish(self, request: Finish) -> Finished | Unavailable:
        current = self._expect(request.case)
        self.current = None
        try:
            beside = current.run.finish()  # releases the heap, then the profiled rounds
        except Exception as exc:  # noqa: BLE001 -- reported, as in prepare
            current.run.close()
            return self._unavailable(request.case, exc)
        result = CaseResult(spec=current.spec, samples_ms=tuple(current.samples_ms), **current.work.result_fields(),
                            **beside)
        log(self.side, f"{current.spec.name}: {result.rounds} rounds, median {result.median_ms:.2f} ms")
        return Finished(result)

    def _expect(self, name: str) -> _Prepared:
        if self.current is None or self.current.spec.name != name:
            prepared = self.current.spec.name if self.current else "nothing"
            raise ProtocolError(f"asked about {name} but {prepared} is prepared")
        return self.current

    def _unavailable(self, name: str, exc: Exception) -> Unavailable:
        log(self.side, f"{name}: cannot run here:\n{''.join(traceback.format_exception(exc))}")
        return Unavailable(name, describe(exc))


def protocol_channel() -> IO[str]:
    """The original stdout, for replies only; file descriptor 1 then points at stderr, so that a
    library printing to stdout can never corrupt the protocol."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return channel


def serve(requests: IO[str], replies: IO[str]) -> int:
    """Answer requests until Quit (exit 0) or the end of stdin (the coordinator is gone: exit 0)."""
    worker: Worker | None = None
    try:
        for line in iter(requests.readline, ""):
            request = decode_message(line, REQUESTS, source="compare coordinator")
            handlers: dict[type, Callable[[Any], Any]] = {}
            if worker is not None:
                handlers = {Prepare: worker.prepare, Round: worker.round, Finish: worker.finish}
            if isinstance(request, Start):
                if worker is not None:
                    raise ProtocolError("Start sent twice")
                worker = Worker(request)
                reply: Any = worker.ready()
            elif isinstance(request, Quit):
                reply = Bye(os.getpid())
            elif type(request) in handlers:
                reply = handlers[type(request)](request)
            else:
                raise ProtocolError(f"{type(request).__name__} before Start")
            replies.write(encode_message(reply))
            replies.flush()
            if isinstance(request, Quit):
                break
    finally:
        if worker is not None:
            worker.close()
    return 0


def serve_child(requests: IO[str], replies: IO[str]) -> int:
    """`serve`, in a process that ends when its parent does (the coordinator, or the fork server)."""
    die_with_parent(os.getppid())
    return serve(requests, replies)


def main() -> int:
    replies = protocol_channel()
    return serve_child(sys.stdin, replies)


if __name__ == "__main__":
    sys.exit(main())
