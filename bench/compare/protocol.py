"""The compare coordinator <-> worker messages: one typed record per request and reply, one JSON line each.

The coordinator writes a request to a worker's stdin and reads exactly one reply from its stdout.
A line is {"type": <class name>, "body": <the record>}, encoded and decoded with the records'
serializer, so a field on one side only is an error, never silently dropped.

    coordinator                      worker
    Start(side, tree, preset, ...)   Ready(cosmos3 file, environment, cases)  models built once
    Prepare(case, warm-up rounds)    Prepared(warm-up ms) | Unavailable(error)
    Round(case)                      RoundDone(ms) | Unavailable(error)       one synchronised round
    Finish(case)                     Finished(CaseResult)                      samples, memory
    Quit()                           Bye()
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bench.core.records import CaseResult, CaseSpec, Environment, decode_record, encode_record
from bench.measure.controls import RunControls
from cosmos3 import strict_json
from cosmos3.errors import InputError

SIDES = ("base", "head")


# ---- requests (coordinator -> worker) ----------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Build the models once; this worker's `cosmos3` must come from `tree`."""

    side: str  # "base" | "head"
    tree: str  # the checkout whose cosmos3 package this worker must import
    preset: str  # tiny | wan22
    dit_layers: int | None = None
    weights_dir: str | None = None
    # Negative controls: the head's; the base always gets none.
    controls: RunControls = field(default_factory=RunControls)

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise InputError("side", f"must be one of {list(SIDES)}", self.side)


@dataclass(frozen=True)
class Prepare:
    """Build the case's workload and run its warm-up rounds (never recorded as samples)."""

    case: CaseSpec
    warmup_rounds: int | None = None  # None: the kind's own round policy


@dataclass(frozen=True)
class Round:
    """One timed, device-synchronised round of the prepared case."""

    case: str  # the prepared case's name: a reply can never be charged to another case


@dataclass(frozen=True)
class Finish:
    """The prepared case's record: every timed round in order, warm-up, memory."""

    case: str


@dataclass(frozen=True)
class Quit:
    """Exit after replying."""


# ---- replies (worker -> coordinator) -----------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    side: str
    pid: int
    tree: str  # as asked in Start
    cosmos3_file: str  # cosmos3/__init__.py as imported, symlinks resolved: inside `tree`
    bench_file: str  # bench/__init__.py as imported, symlinks resolved: the head's
    environment: Environment
    cases: tuple[CaseSpec, ...]  # this side's grid: the head's benchmarks over this side's cosmos3


@dataclass(frozen=True)
class Prepared:
    case: str
    warmup_ms: tuple[float, ...]


@dataclass(frozen=True)
class Unavailable:
    """This side cannot build or run the case; the worker is still alive and ready for the next one."""

    case: str
    error: str  # the exception and the end of its traceback


@dataclass(frozen=True)
class RoundDone:
    case: str
    ms: float


@dataclass(frozen=True)
class Finished:
    result: CaseResult


@dataclass(frozen=True)
class Bye:
    pid: int


REQUESTS: dict[str, type] = {cls.__name__: cls for cls in (Start, Prepare, Round, Finish, Quit)}
REPLIES: dict[str, type] = {cls.__name__: cls for cls in (Ready, Prepared, Unavailable, RoundDone, Finished, Bye)}
_ENVELOPE = frozenset({"type", "body"})


def encode_message(message: Any) -> str:
    """One line of JSON, newline included."""
    kind = type(message).__name__
    if kind not in REQUESTS and kind not in REPLIES:
        raise TypeError(f"{kind} is not a compare message")  # a programming error
    return json.dumps({"type": kind, "body": encode_record(message)}, allow_nan=False) + "\n"


def decode_message(line: str, known: dict[str, type], *, source: str) -> Any:
    """The typed message on `line`, which must be one of `known`; InputError naming `source` otherwise."""
    try:
        data = strict_json.loads(line, source)
    except json.JSONDecodeError as exc:
        raise InputError(source, f"must send one JSON message per line ({exc})", line[:200]) from None
    if not isinstance(data, dict) or set(data) != _ENVELOPE:
        raise InputError(source, "must send {'type', 'body'} objects", line[:200])
    cls = known.get(data["type"]) if isinstance(data["type"], str) else None
    if cls is None:
        raise InputError(f"{source}.type", f"must be one of {sorted(known)}", data["type"])
    return decode_record(cls, data["body"], f"{source}.{cls.__name__}")
