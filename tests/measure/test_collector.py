"""bench.measure.collector: no garbage collection inside a timed round, in the pytest benchmarks and in compare's
workers; each check is also run with the collector left alone, which must fail it."""

from __future__ import annotations

import contextlib
import gc
import json
import weakref

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from bench.compare.protocol import Finish, Prepare, Round, Start
from bench.compare.worker import Worker
from bench.core.records import CaseSpec
from bench.measure import collector
from bench.measure.collector import GC_EVENT, GcPauses, frozen_heap, no_collection
from bench.measure.counters import CAT_ANNOTATION, trace_events
from bench.measure.harness import CONTROLS_ENV, CaseRun, RoundPolicy, RunControls, measure
from tests.repo import REPO

CPU = torch.device("cpu")
# Enough new reference cycles to cross the young generation's threshold (700 objects before Python
# 3.13, 2000 from it) several times over: with the collector on, a round making them is collected inside.
CYCLES = 20_000


class Rounds:
    """A round's work that makes garbage cycles, and how many collections started inside each call."""

    def __init__(self) -> None:
        self.inside = False
        self.collections: list[int] = []  # per call of the work, in order

    def __call__(self) -> int:
        self.collections.append(0)
        self.inside = True
        for _ in range(CYCLES):
            cycle: list = []
            cycle.append(cycle)
        self.inside = False
        return CYCLES

    def callback(self, phase: str, info: dict) -> None:
        if phase == "start" and self.inside:
            self.collections[-1] += 1


@pytest.fixture
def rounds():
    work = Rounds()
    gc.callbacks.append(work.callback)
    yield work
    gc.callbacks.remove(work.callback)
    assert gc.isenabled() and gc.get_freeze_count() == 0  # every test leaves the collector as it found it


@pytest.mark.parametrize("enabled", [True, False])
def test_frozen_heap_freezes_what_is_alive_and_restores_the_collector(enabled):
    if not enabled:
        gc.disable()
    try:
        with frozen_heap():
            assert gc.get_freeze_count() > 0
            gc.disable() if enabled else gc.enable()  # a round left inside no_collection, say
        assert gc.get_freeze_count() == 0 and gc.isenabled() is enabled
    finally:
        gc.enable()


def test_no_collection_collects_the_rounds_cycles_after_it():
    class Node:
        pass

    with frozen_heap():
        with no_collection():
            assert not gc.isenabled()
            node = Node()
            node.self = node
            alive = weakref.ref(node)
            del node
            assert alive() is not None  # a cycle: reference counting cannot free it
        assert gc.isenabled() and alive() is None


def test_no_collection_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with no_collection():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("left_alone", [False, True])
def test_measure_keeps_collections_out_of_its_timed_rounds(benchmark, monkeypatch, rounds, left_alone):
    monkeypatch.delenv(CONTROLS_ENV, raising=False)
    if left_alone:  # the negative control: the collector runs as it would without bench.measure.collector
        monkeypatch.setattr(collector, "frozen_heap", contextlib.nullcontext)
        monkeypatch.setattr(collector, "no_collection", contextlib.nullcontext)
    measure(benchmark, rounds, device=CPU, case_name="case[a]", policy=RoundPolicy(1, 5, 5, 1e-3), profile=False)
    warm_up, *timed = rounds.collections
    assert len(timed) == len(benchmark.stats.stats.data) == 5
    assert warm_up > 0  # the warm-up round runs with the collector as it is
    assert all(timed) if left_alone else not any(timed)


def test_a_failing_round_leaves_the_collector_on(benchmark, monkeypatch, rounds):
    monkeypatch.delenv(CONTROLS_ENV, raising=False)
    calls = []

    def fails_in_the_second_timed_round():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("round 2")

    with pytest.raises(RuntimeError, match="round 2"):
        measure(benchmark, fails_in_the_second_timed_round, device=CPU, case_name="case[a]",
                policy=RoundPolicy(1, 5, 5, 1e-3), profile=False)
    # the rounds fixture checks that the collector is on and nothing is frozen


@pytest.mark.parametrize("left_alone", [False, True])
def test_timed_round_keeps_collections_out(rounds, monkeypatch, left_alone):
    if left_alone:
        monkeypatch.setattr(collector, "no_collection", contextlib.nullcontext)
    run = CaseRun(rounds, device=CPU, case_name="case[a]", controls=RunControls(), policy=RoundPolicy(1, 5, 5, 1e-3),
                  profile=False)
    try:
        ms, result = run.timed_round()
    finally:
        run.close()
    assert ms > 0 and result == CYCLES
    assert (rounds.collections[1] > 0) is left_alone  # [0]: the warm-up round, the collector as it is


def test_a_compare_worker_freezes_the_heap_from_warm_up_to_finish(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = CaseSpec("vae_encode", 64, 48, 1)
    worker = Worker(Start("head", str(REPO), "tiny"))
    try:
        worker.prepare(Prepare(case, 1))
        assert gc.get_freeze_count() > 0
        worker.round(Round(case.name))
        assert gc.isenabled() and gc.get_freeze_count() > 0
        worker.finish(Finish(case.name))
        assert gc.get_freeze_count() == 0
        worker.prepare(Prepare(case, 1))
        assert worker.prepare(Prepare(CaseSpec("no_such_kind", 64, 48, 9), 1)).error
        assert gc.get_freeze_count() == 0  # released with the case it replaced
        worker.prepare(Prepare(case, 1))
    finally:
        worker.close()
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_gc_pauses_times_each_collection_and_marks_it_in_a_trace(tmp_path):
    with profile(activities=[ProfilerActivity.CPU]) as prof, GcPauses(annotate=True) as pauses:
        gc.collect()
    assert gc.callbacks.count(pauses._callback) == 0
    (start, ms, generation), *_ = [p for p in pauses.pauses if p[2] == 2]
    assert generation == 2 and ms >= 0 and start > 0
    prof.export_chrome_trace(str(tmp_path / "trace.json"))
    events = trace_events(json.loads((tmp_path / "trace.json").read_text()))
    assert f"{GC_EVENT}2" in {e.name for e in events if e.category == CAT_ANNOTATION}


def test_gc_pauses_pairs_each_start_with_its_stop_on_the_clock(monkeypatch):
    """Scripted: a stop before any start is not counted, nor a second stop; each pause is (start, ms, gen);
    nothing is marked in a trace unless asked."""
    readings = iter([0.5, 1.0, 1.25, 1.5, 2.0, 2.002])
    monkeypatch.setattr(collector.time, "perf_counter", lambda: next(readings))
    monkeypatch.setattr(collector, "record_function", lambda name: pytest.fail(f"{name} marked, unasked"))
    gc.disable()  # no real collection may take a reading
    try:
        with GcPauses() as pauses:
            pauses._callback("stop", {"generation": 0})
            pauses._callback("start", {"generation": 2})
            pauses._callback("stop", {"generation": 2})
            pauses._callback("stop", {"generation": 2})
            pauses._callback("start", {"generation": 0})
            pauses._callback("stop", {"generation": 0})
    finally:
        gc.enable()
    assert pauses.pauses == [(1.0, 250.0, 2), (2.0, pytest.approx(2.0), 0)]
