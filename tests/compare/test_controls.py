"""Each negative control in a compare on the tiny preset: it changes the head's figures and only the
head's, and fails the head on its own rule (the slowdown and the GPU work on latency, the extra sync on
syncs, the extra kernel on kernel launches, the revert on latency and counters).

Both sides are real workers (bench.compare.worker.Worker, the models of the tiny preset, the one measuring loop
of bench.measure.harness.CaseRun), served in this process and driven by compare's own trial loop and judge; the
slow tests of test_compare.py run the same through `python -m bench compare` with worker processes.
Before the loop was one, the worker applied only the slowdown: three of these failed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.compare.coordinator import measure_case
from bench.compare.judge import CompareReport, judge
from bench.compare.policy import DEFAULT_THRESHOLD, TrialPolicy
from bench.compare.protocol import Finish, Prepare, Round, Start
from bench.compare.record import CompareRecord, Criteria, PairedCase, Side
from bench.compare.worker import Worker
from bench.core.records import CaseSpec
from bench.measure.harness import RunControls
from tests.repo import REPO

CASE = CaseSpec("latent_prep", 64, 48, 17, "single_frame")
POLICY = TrialPolicy(warmup_rounds=1, min_trials=10, max_trials=12, budget_s=1e6)
CONTROLS = {
    "slowdown": (RunControls(slowdowns={CASE.name: 1.0}), "median paired ratio"),
    "gpu work": (RunControls(gpu_work={CASE.name: 1.0}), "median paired ratio"),
    "sync": (RunControls(syncs=(CASE.name,)), "synchronization"),
    "kernel": (RunControls(kernels=(CASE.name,)), "kernel launch"),
    "revert": (RunControls(reverted=("single_frame",)), "median paired ratio"),
}


class InProcess:
    """A Worker answering the coordinator's requests in this process, as serve() does over its pipes."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def request(self, message, expected, timeout_s=None):
        handler = {Prepare: self.worker.prepare, Round: self.worker.round, Finish: self.worker.finish}
        reply = handler[type(message)](message)
        assert isinstance(reply, expected), reply
        return reply


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("base"))
    worker = Worker(Start("base", str(REPO), "tiny"))
    os.chdir(cwd)
    yield worker
    worker.close()


def compare_with(head_controls: RunControls, base: Worker, tmp_path, monkeypatch) -> CompareReport:
    monkeypatch.chdir(tmp_path)
    head = Worker(Start("head", str(REPO), "tiny", controls=head_controls))
    try:
        workers = {"head": InProcess(head), "base": InProcess(base)}
        pair = measure_case(CASE, workers, POLICY, threshold=DEFAULT_THRESHOLD,
                                rng=np.random.default_rng(0), seed=0)
    finally:
        head.close()
    assert isinstance(pair, PairedCase), pair
    sides = {name: Side(name, name, "0" * 40, False, "cosmos3/__init__.py",
                            dataclasses.replace(worker.environment, commit="0" * 40))
             for name, worker in (("head", head), ("base", base))}
    record = CompareRecord(base=sides["base"], head=sides["head"], criteria=Criteria(), policy=POLICY,
                               pairs=(pair,))
    return judge(record)


@pytest.fixture(scope="module")
def unchanged(base, tmp_path_factory):
    """The base's own figures in an A/A compare: what every control must leave alone on the base's side."""
    mp = pytest.MonkeyPatch()
    try:
        return compare_with(RunControls(), base, tmp_path_factory.mktemp("aa"), mp)
    finally:
        mp.undo()


def test_an_unchanged_head_passes(unchanged):
    assert unchanged.passed, unchanged.failures
    pair = unchanged.record.pairs[0]
    assert pair.head.injected == pair.base.injected == ()
    assert pair.head.counters.launches_of() == pair.base.counters.launches_of()


@pytest.mark.parametrize("control", list(CONTROLS))
def test_each_control_fails_the_head_on_its_own_rule_and_leaves_the_base_alone(control, base, unchanged, tmp_path,
                                                                               monkeypatch):
    controls, rule_words = CONTROLS[control]
    report = compare_with(controls, base, tmp_path, monkeypatch)
    pair = report.record.pairs[0]
    assert not report.passed, f"{control}: the compare passed"
    assert any(rule_words in failure for failure in report.failures), (control, report.failures)
    # Only the head's figures moved: the base ran no control and did the same work as in the A/A compare.
    assert pair.base.injected == ()
    reference = unchanged.record.pairs[0].base.counters
    assert pair.base.counters.launches_of() == reference.launches_of()
    assert (pair.base.counters.syncs, pair.base.counters.kernel_launches) == (reference.syncs,
                                                                             reference.kernel_launches)
    if control != "revert":
        assert pair.head.injected, control  # recorded on the head's case
