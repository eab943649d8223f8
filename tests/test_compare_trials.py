"""`measure_case`, the trial loop of a compare, in process against scripted workers: both sides warm up
before any trial, each trial runs one round per side in a random order, a case either side cannot run is
reported (a failure on the head, not comparable on the base), and the trials stop by the rules of
`stop_reason` (the slow tests in test_compare.py drive real workers)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import compare as cmp
from bench.protocol import Finish, Finished, Prepare, Prepared, Round, RoundDone, Unavailable
from bench.records import CaseResult, CaseSpec

SPEC = CaseSpec("latent_prep", 96, 64, 9, "single_frame")
POLICY = cmp.TrialPolicy(warmup_rounds=1, min_trials=10, max_trials=40, budget_s=1e6)


class ScriptedWorker:
    """Replies as a worker would, with a fixed round time; `fail` = (request type, error) makes it Unavailable."""

    def __init__(self, side: str, ms: float, journal: list, fail: tuple[type, str] | None = None):
        self.side, self.ms, self.journal, self.fail = side, ms, journal, fail
        self.rounds: list[float] = []

    def request(self, message, expected, timeout_s=None):
        self.journal.append((self.side, type(message).__name__))
        if self.fail and isinstance(message, self.fail[0]):
            reply = Unavailable(SPEC.name, self.fail[1])
        elif isinstance(message, Prepare):
            assert message.case == SPEC and message.warmup_rounds == POLICY.warmup_rounds
            reply = Prepared(SPEC.name, (self.ms,))
        elif isinstance(message, Round):
            assert message.case == SPEC.name
            ms = self.ms * (1 + 0.001 * (len(self.rounds) % 3))  # a little spread, so intervals are finite
            self.rounds.append(ms)
            reply = RoundDone(SPEC.name, ms)
        else:
            assert isinstance(message, Finish) and message.case == SPEC.name
            reply = Finished(CaseResult(spec=SPEC, samples_ms=tuple(self.rounds)))
        assert isinstance(reply, expected)
        return reply


def workers(head_ms=10.0, base_ms=10.0, *, head_fail=None, base_fail=None):
    journal: list = []
    return journal, {"head": ScriptedWorker("head", head_ms, journal, head_fail),
                     "base": ScriptedWorker("base", base_ms, journal, base_fail)}


def measure(sides, threshold=0.02, seed=0):
    return cmp.measure_case(SPEC, sides, POLICY, threshold=threshold, rng=np.random.default_rng(seed), seed=seed)


def test_both_sides_warm_up_first_then_each_trial_runs_one_round_per_side():
    journal, sides = workers()
    outcome = measure(sides)
    assert isinstance(outcome, cmp.PairedCase)
    assert sorted(journal[:2]) == [("base", "Prepare"), ("head", "Prepare")]
    rounds = journal[2:-2]
    assert all(kind == "Round" for _, kind in rounds) and len(rounds) % 2 == 0
    trials = [rounds[i:i + 2] for i in range(0, len(rounds), 2)]
    assert all({side for side, _ in trial} == {"head", "base"} for trial in trials)  # one round each, never two
    assert outcome.head_first == tuple(trial[0][0] == "head" for trial in trials)
    assert 0 < sum(outcome.head_first) < len(trials)  # the order is drawn per trial, not fixed
    assert sorted(journal[-2:]) == [("base", "Finish"), ("head", "Finish")]
    assert outcome.head.samples_ms == tuple(sides["head"].rounds) and outcome.base.samples_ms == tuple(
        sides["base"].rounds)


def test_equal_sides_stop_as_soon_as_the_interval_lies_within_the_limit():
    _, sides = workers()
    outcome = measure(sides)
    assert outcome.stopped == "within" and len(outcome.head_first) == POLICY.min_trials


def test_a_slow_head_is_never_stopped_early_on_data_that_look_slow():
    """+10% against a 2% threshold: the interval lies above the limit, which is no reason to stop; the
    interval is soon narrower than the threshold ("resolved"), so the case stops at its first check."""
    _, sides = workers(head_ms=11.0)
    outcome = measure(sides)
    assert outcome.stopped == "resolved" and len(outcome.head_first) >= POLICY.min_trials
    assert np.median(outcome.log_ratios) == pytest.approx(np.log(1.1), abs=2e-3)


@pytest.mark.parametrize("request_type", [Prepare, Round, Finish])
def test_a_case_the_head_cannot_run_fails_and_one_the_base_cannot_is_not_comparable(request_type):
    _, sides = workers(head_fail=(request_type, "RuntimeError: out of memory"))
    failed = measure(sides)
    assert (failed.status, failed.reason) == (cmp.FAILED, "RuntimeError: out of memory")
    _, sides = workers(base_fail=(request_type, "AttributeError: no first_frame_2d"))
    other = measure(sides)
    assert other.status == cmp.NOT_COMPARABLE
    assert other.reason == "the base cannot run it: AttributeError: no first_frame_2d"
    assert other.spec == failed.spec == SPEC
