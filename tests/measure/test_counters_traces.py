"""Work counters on real Kineto traces of CUDA runs (tests/data/traces, see SOURCES.json there).

Each trace's rounds are its ProfilerStep#N windows, or the whole trace where it has none. The
expected counts are taken straight from the JSON here, by a rule written apart from
bench.measure.counters: a round holds the runtime and driver calls that start inside its window and the
device records with their correlation ids (or, for a device record whose call is not in the
trace, inside the window by time).
"""

from __future__ import annotations

import gzip
import json

import pytest

from bench.measure.counters import IncompleteProfile, TraceEvent, count_round, split_rounds, trace_events
from tests.repo import DATA

TRACES = DATA / "traces"
NAMES = sorted(p.name for p in TRACES.glob("*.json.gz"))
STEP = "ProfilerStep#"
WHOLE = "test.whole_trace"  # the one round of a trace without steps
SYNCS = {"cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpy2D",
         "cudaMemcpy3D"}


def in_window(lo: float, hi: float, ts: float) -> bool:
    return lo <= ts <= hi


@pytest.fixture(scope="module", params=NAMES)
def trace(request) -> tuple[str, list[dict], list[TraceEvent]]:
    """(name, the raw complete events, the events bench.measure.counters reads), a whole-trace window added if no steps."""
    with gzip.open(TRACES / request.param, "rb") as handle:
        data = json.load(handle)
    raw = [e for e in data["traceEvents"] if e.get("ph") == "X" and "cat" in e]
    if not any(e["name"].startswith(STEP) for e in raw if e["cat"] == "user_annotation"):
        lo = min(float(e["ts"]) for e in raw)
        hi = max(float(e["ts"]) + float(e.get("dur", 0)) for e in raw)
        raw.append({"ph": "X", "cat": "user_annotation", "name": WHOLE, "ts": lo, "dur": hi - lo})
        data = {"traceEvents": data["traceEvents"] + [raw[-1]]}
    return request.param, raw, trace_events(data)


def is_round(name: str) -> bool:
    return name.startswith(STEP) or name == WHOLE


def expected_rounds(raw: list[dict]) -> list[dict]:
    """The counts of each round, straight from the JSON."""
    windows = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in raw
                     if e["cat"] == "user_annotation" and is_round(e["name"]))
    calls = {e["args"]["correlation"]: e for e in raw if e["cat"] in ("cuda_runtime", "cuda_driver")}
    out = []
    for lo, hi in windows:
        mine = {c for c, e in calls.items() if in_window(lo, hi, float(e["ts"]))}
        device = [e for e in raw if e["cat"] in ("kernel", "gpu_memcpy", "gpu_memset")
                  and (e["args"]["correlation"] in mine
                       or (e["args"]["correlation"] not in calls and in_window(lo, hi, float(e["ts"]))))]
        h2d = [e for e in device if e["cat"] == "gpu_memcpy" and e["name"].startswith("Memcpy HtoD")]
        d2h = [e for e in device if e["cat"] == "gpu_memcpy" and e["name"].startswith("Memcpy DtoH")]
        out.append({
            "kernel_launches": sum(e["cat"] == "kernel" for e in device),
            "h2d_copies": len(h2d), "h2d_bytes": sum(e["args"]["bytes"] for e in h2d),
            "d2h_copies": len(d2h), "d2h_bytes": sum(e["args"]["bytes"] for e in d2h),
            "syncs": sum(calls[c]["cat"] == "cuda_runtime" and calls[c]["name"].split("_")[0] in SYNCS for c in mine),
            "device_ms": sum(float(e["dur"]) for e in device) / 1e3,
        })
    return out


def counted(events: list[TraceEvent]) -> list:
    return [count_round(r, source="cuda") for r in split_rounds(events, annotation=is_round)]


def test_every_round_counts_what_the_json_holds(trace):
    name, raw, events = trace
    expected = expected_rounds(raw)
    got = counted(events)  # nothing missing: nothing raises
    assert len(got) == len(expected) > 0
    for i, (counts, want) in enumerate(zip(got, expected)):
        have = {k: getattr(counts, k) for k in want}
        assert have == {**want, "device_ms": pytest.approx(want["device_ms"], rel=1e-12)}, (name, i)
    assert sum(c.kernel_launches for c in got) > 0


def test_a_deleted_kernel_record_fails_its_round(trace):
    """The negative control: the same trace, less one kernel whose launching call is in the first round."""
    events = trace[2]
    (first, *_) = split_rounds(events, annotation=is_round)
    launches = {e.correlation for e in first if e.category in ("cuda_runtime", "cuda_driver")}
    victim = next(e for e in first if e.category == "kernel" and e.correlation in launches)
    with pytest.raises(IncompleteProfile, match="kernel or graph launches"):
        counted([e for e in events if e != victim])


def rounds_of(trace, name: str) -> list:
    if trace[0] != name:
        pytest.skip(f"a fact of {name}")
    return counted(trace[2])


def test_cudnn_zero_byte_memsets_are_empty_copies_not_dropped_work(trace):
    """V100 ResNet: cuDNN's cudaMemsetAsync calls with no gpu_memset record, in every step."""
    rounds = rounds_of(trace, "ns_resolution.json.gz")
    assert all(r.empty_copies > 0 for r in rounds), [r.empty_copies for r in rounds]


def test_unnamed_runtime_calls_are_counted(trace):
    """A100 recsys: Kineto wrote INVALID for 75 runtime calls (cbid 409), none with a device record."""
    rounds = rounds_of(trace, "negqueue_rank0.json.gz")
    assert sum(r.unnamed_calls for r in rounds) == sum(e["name"] == "INVALID" for e in trace[1]) == 75
