"""`measure_case`, the trial loop of a compare, in process against scripted workers: both sides warm up
before any trial, each trial runs one round per side in a random order, a case either side cannot run is
reported (a failure on the head, not comparable on the base), and the trials stop by the rules of
`stop_reason` (the slow tests in test_compare.py drive real workers)."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from bench.cli import compare as cli_compare
from bench.cli.compare import worker_start_for
from bench.cli.main import main
from bench.compare.coordinator import measure_case
from bench.compare.judge import judge
from bench.compare.policy import (
    CASE_BUDGET_S,
    TrialPolicy,
    check_processes,
    check_start,
    default_processes,
    default_start,
)
from bench.compare.protocol import Finish, Finished, Prepare, Prepared, Round, RoundDone, Unavailable
from bench.compare.record import FAILED, NOT_COMPARABLE, PairedCase, load_compare
from bench.core.records import CaseResult, CaseSpec
from bench.gate import stats
from bench.gate.stats import REGRESSION
from cosmos3.errors import InputError

SPEC = CaseSpec("latent_prep", 96, 64, 9, "single_frame")
POLICY = TrialPolicy(warmup_rounds=1, min_trials=10, max_trials=40, budget_s=1e6)


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
    return measure_case(SPEC, sides, POLICY, threshold=threshold, rng=np.random.default_rng(seed), seed=seed)


def test_both_sides_warm_up_first_then_each_trial_runs_one_round_per_side():
    journal, sides = workers()
    outcome = measure(sides)
    assert isinstance(outcome, PairedCase)
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
    assert (failed.status, failed.reason) == (FAILED, "RuntimeError: out of memory")
    _, sides = workers(base_fail=(request_type, "AttributeError: no first_frame_2d"))
    other = measure(sides)
    assert other.status == NOT_COMPARABLE
    assert other.reason == "the base cannot run it: AttributeError: no first_frame_2d"
    assert other.spec == failed.spec == SPEC


# ---- process pairs: the process is randomized and measured ----------------------------------------


class BiasedWorker(ScriptedWorker):
    """A scripted worker whose every round is `bias` times slower: an offset that lasts as long as the process."""

    def __init__(self, side, ms, journal, bias=1.0):
        super().__init__(side, ms * bias, journal)


def process_pairs(head_biases, *, head_ms=10.0, base_ms=10.0):
    journal: list = []
    return journal, [{"head": BiasedWorker("head", head_ms, journal, b), "base": BiasedWorker("base", base_ms, journal)}
                     for b in head_biases]


def test_trials_are_spread_over_the_process_pairs_in_shuffled_blocks():
    journal, pairs = process_pairs([1.0] * 4)
    outcome = measure(pairs)
    assert isinstance(outcome, PairedCase)
    n = len(outcome.head_first)
    assert n % 4 == 0 and n >= POLICY.min_trials
    blocks = [outcome.process[i:i + 4] for i in range(0, n, 4)]
    assert all(sorted(b) == [0, 1, 2, 3] for b in blocks)  # every block one trial per pair
    assert len(set(blocks)) > 1  # in a drawn order, not a fixed one
    assert all(len(p["head"].rounds) == len(p["base"].rounds) == n // 4 for p in pairs)
    assert sum(kind == "Prepare" for _, kind in journal) == 8  # every worker warms up
    # the record holds the trials in trial order, whichever worker ran them
    it = {j: iter(pairs[j]["head"].rounds) for j in range(4)}
    assert outcome.head.samples_ms == tuple(next(it[j]) for j in outcome.process)


def judged(outcome, make_env):
    from tests.compare.helpers import record

    (c,) = judge(record([outcome], make_env=make_env)).comparisons
    return c


def test_a_per_process_bias_of_10_percent_with_no_real_difference_passes(make_env):
    """Head processes 10% slower, 6% slower, as fast and 3% faster than the base's, the code alike: the
    pooled Wilcoxon test alone calls it a regression; across the four pairs it is not significant."""
    _, pairs = process_pairs([1.10, 1.06, 1.0, 0.97])
    outcome = measure(pairs)
    c = judged(outcome, make_env)
    assert c.ratio > 1.02 and c.p_adjusted < 0.01  # what one process per side would have concluded
    assert c.processes == 4 and c.p_process_adjusted > 0.01
    assert c.verdict == stats.NOT_SIGNIFICANT and "a process-level difference" in c.note
    assert c.process_spread == pytest.approx(np.std(np.log([1.10, 1.06, 1.0, 0.97]), ddof=1), rel=0.05)
    assert c.within_spread < 0.01


def test_a_real_10_percent_difference_with_no_process_bias_fails(make_env):
    _, pairs = process_pairs([1.0] * 4, head_ms=11.0)
    c = judged(measure(pairs), make_env)
    assert c.verdict == stats.REGRESSION and c.p_process_adjusted < 1e-3
    assert "across 4 process pairs" in c.note and c.process_spread < 0.01


def test_one_process_pair_says_the_process_bias_was_not_measured(make_env):
    _, pairs = process_pairs([1.0], head_ms=11.0)
    c = judged(measure(pairs[0]), make_env)
    assert c.verdict == stats.REGRESSION and c.p_process is None and c.processes == 1
    assert "process bias not measured" in c.note


def test_a_4x_slowdown_with_an_8_percent_pair_spread_fails_in_three_pairs(make_env):
    """CI's failure: in two pairs a 4.46x injected slowdown with an 8.3% pair spread gave p=0.012 across
    the pairs (one degree of freedom) and passed; three pairs, the fewest compare accepts, catch it."""
    _, pairs = process_pairs([4.0, 4.8, 4.4])
    c = judged(measure(pairs), make_env)
    assert c.verdict == stats.REGRESSION and c.p_process_adjusted < 0.01 and c.process_spread > 0.04
    two = judged(measure(process_pairs([4.0, 4.8])[1]), make_env)
    assert two.verdict == stats.NOT_SIGNIFICANT and two.p_process_adjusted > 0.01  # why 2 pairs are refused


@pytest.mark.parametrize("k", [0, 2, 33, True, 2.5])
def test_compare_refuses_a_process_count_that_cannot_test_across_pairs(k):
    with pytest.raises(InputError, match="processes"):
        check_processes(k)
    for ok in (1, 3, 4, 32):
        check_processes(ok)


def test_workers_fork_only_where_no_gpu_is_used():
    assert default_start("cpu") == "fork"
    assert default_start("cuda") == "exec"
    assert default_start("mps") == "exec"  # a device nobody checked: the fresh interpreter
    for bad in ("spawn", "", None):
        with pytest.raises(InputError, match="worker_start"):
            check_start(bad)


def test_fork_is_refused_where_cuda_is_available(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli_compare, "device_kind", lambda: "cuda")
    code = main(["compare", "--base", "HEAD", "--preset", "tiny", "-k", "latent_prep",
                     "--worker-start", "fork", "--results-dir", str(tmp_path / "results")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: worker_start" in err and "cannot be fork where CUDA is available" in err, err
    assert not (tmp_path / "results").exists()
    monkeypatch.setattr(cli_compare, "device_kind", lambda: "cpu")
    assert worker_start_for(argparse.Namespace(worker_start=None)) == "fork"
    assert worker_start_for(argparse.Namespace(worker_start="exec")) == "exec"


def simulated_pair(rng, k, process_sd, trial_sd=0.01, trials_per_pair=4, effect=0.0):
    spec = SPEC
    bias = rng.normal(0, process_sd, k)
    process = np.tile(np.arange(k), trials_per_pair)
    base = 10 * np.exp(trial_sd * rng.standard_normal(len(process)))
    head = base * np.exp(effect + bias[process] + trial_sd * rng.standard_normal(len(process)))
    return PairedCase(CaseResult(spec, tuple(head)), CaseResult(spec, tuple(base)),
                          tuple(bool(x) for x in rng.integers(0, 2, len(process))), "budget", tuple(process.tolist()))


def test_aa_false_alarms_stay_within_alpha_whatever_the_process_bias(make_env):
    """100 simulated A/A cases with a 5% process-to-process spread (trial noise 1%), 4 pairs of 4 trials:
    the pooled test alone alarms on a fifth, with the across-pairs test at most alpha's share (binomial bound)."""
    from tests.compare.helpers import record

    rng = np.random.default_rng(3)
    cases = [simulated_pair(rng, 4, 0.05) for _ in range(100)]
    alarms = pooled = 0
    for case in cases:
        (c,) = judge(record([case], make_env=make_env, alpha=0.05)).comparisons
        alarms += c.verdict == stats.REGRESSION
        pooled += c.ratio > 1.02 and c.p_adjusted < 0.05
    assert pooled > 15  # 21 with this seed: four times alpha
    assert alarms <= 10  # P(Binomial(100, 0.05) > 10) < 0.012
    detected = sum(judge(record([simulated_pair(rng, 4, 0.01, effect=np.log(1.1))], make_env=make_env,
                                    alpha=0.05)).comparisons[0].verdict == stats.REGRESSION for _ in range(20))
    assert detected >= 18


def test_the_record_keeps_each_trial_s_process_and_reads_back(tmp_path, make_env):
    from bench.core.records import encode_record, write_json_atomic
    from tests.compare.helpers import record

    _, pairs = process_pairs([1.0, 1.02, 0.99])
    rec = record([measure(pairs)], make_env=make_env)
    rec = dataclasses.replace(rec, processes=3, startup_s=12.5, worker_start="fork")
    write_json_atomic(tmp_path / "compare.json", encode_record(rec))
    back = load_compare(tmp_path / "compare.json")
    assert back == rec and back.schema_version == 2 and set(back.pairs[0].process) == {0, 1, 2}
    data = encode_record(rec)
    assert data["worker_start"] == "fork"
    del data["worker_start"]  # a record from before the choice reads back, saying nothing of it
    write_json_atomic(tmp_path / "before.json", data)
    assert load_compare(tmp_path / "before.json").worker_start is None
    data["worker_start"] = "spawn"
    write_json_atomic(tmp_path / "bad.json", data)
    with pytest.raises(InputError, match="worker_start: must be one of exec, fork"):
        load_compare(tmp_path / "bad.json")
    data = encode_record(rec)
    data["schema_version"] = 1
    write_json_atomic(tmp_path / "old.json", data)
    with pytest.raises(InputError, match="schema_version"):
        load_compare(tmp_path / "old.json")


def test_with_noisy_rounds_more_pairs_buy_the_power_that_more_trials_per_pair_cannot(make_env):
    """A +10% change in rounds that vary by 20% (the CPU's 64x48 cases on a loaded 2-core host), 160 trials in
    all, judged at Holm's strictest level for three cases (0.01/3): spread over 4 pairs (3 dof) it is mostly
    missed, over 8 pairs (7 dof) mostly caught (4 against 16 of 20 with this seed). Why the CPU default is 8."""
    from tests.compare.helpers import record

    rng = np.random.default_rng(11)

    def detected(k):
        cases = [simulated_pair(rng, k, 0.01, trial_sd=0.2, trials_per_pair=160 // k, effect=np.log(1.1))
                 for _ in range(20)]
        return sum(judge(record([c], make_env=make_env, alpha=0.01 / 3)).comparisons[0].verdict == REGRESSION
                   for c in cases)

    four, eight = detected(4), detected(8)
    assert eight >= 16 and four <= eight - 5, (four, eight)
    assert default_processes("cpu") == 8 and default_processes("cuda") == 4
    assert CASE_BUDGET_S == {"cuda": 4.0, "cpu": 6.0}
