"""bench.gate.stats: the gate's and compare's statistics, and the one verdict tree both go through."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.gate import stats

# ---- a run against its stored baseline: Mann-Whitney and the ratio of medians ----------------------


def test_testable_at_its_boundaries():
    assert stats.MIN_SAMPLES == 3
    assert not stats.testable(2, 100, 0.5) and stats.testable(3, 100, 0.5)  # fewer than MIN_SAMPLES on a side
    # 5 against 5: the smallest one-sided p is 1/252 (0.00397).
    assert stats.testable(5, 5, 0.005) and not stats.testable(5, 5, 1 / 252) and not stats.testable(4, 4, 0.01)


def test_p_value_is_one_sided_and_exact_for_small_samples():
    slow, fast = [2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 1.1, 1.2, 1.3, 1.4]
    assert stats.mann_whitney_p(slow, fast, "greater") == pytest.approx(1 / 252)
    assert stats.mann_whitney_p(slow, fast, "less") == pytest.approx(1.0)
    assert stats.mann_whitney_p([1.0] * 5, [1.0] * 5, "greater") == 1.0


def test_ratio_ci_is_a_seeded_percentile_bootstrap_of_the_ratio_of_medians():
    rng = np.random.default_rng(0)
    cur, base = 11 * np.exp(0.05 * rng.standard_normal(30)), 10 * np.exp(0.05 * rng.standard_normal(30))
    low, high = stats.ratio_ci(cur, base)
    ratio = np.median(cur) / np.median(base)
    assert low < ratio < high and high - low < 0.2
    assert (low, high) == stats.ratio_ci(cur, base)  # seeded: the same interval every time
    assert (low, high) != stats.ratio_ci(cur, base, seed=1)
    assert (low, high) != stats.ratio_ci(cur, base, resamples=50)
    # The percentile interval of exactly these resamples (not BCa, not another level).
    direct = scipy_stats.bootstrap(
        (cur, base), lambda c, b, axis=-1: np.median(c, axis=axis) / np.median(b, axis=axis),
        n_resamples=2000, confidence_level=0.95, method="percentile", vectorized=True,
        rng=np.random.default_rng(0)).confidence_interval
    assert (low, high) == (direct.low, direct.high)


# ---- interleaved pairs: Holm, Wilcoxon, the median's interval -------------------------------------


def test_holm_adjusts_by_rank_and_keeps_the_order():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5]) == [0.5]
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []


def test_holm_optional_adjusts_only_the_tests_that_ran():
    assert stats.holm_optional([0.01, None, 0.04]) == pytest.approx([0.02, None, 0.04])
    assert stats.holm_optional([None, None]) == [None, None]


def step_down_rejections(p: list[float], alpha: float) -> set[int]:
    """Holm's procedure as written: reject in ascending order while p_(k) <= alpha / (m - k + 1)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for k, i in enumerate(order):
        if p[i] > alpha / (len(p) - k):
            break
        rejected.add(i)
    return rejected


def test_holm_rejects_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(0)
    for _ in range(500):
        m = int(rng.integers(1, 8))
        p = list(rng.uniform(0, 0.05, m) ** rng.uniform(0.5, 2))
        adjusted = stats.holm(p)
        assert {i for i, a in enumerate(adjusted) if a <= 0.01} == step_down_rejections(p, 0.01)


def test_holm_keeps_the_family_wise_false_alarm_rate():
    """Under the global null (uniform p-values), any rejection among m happens at most alpha of the time."""
    rng = np.random.default_rng(1)
    trials, m, alpha = 20000, 6, 0.05
    p = rng.uniform(size=(trials, m))
    any_rejected = sum(min(stats.holm(row)) < alpha for row in p)
    assert any_rejected / trials <= alpha + 0.005
    # Without the correction it would be about 1 - (1 - alpha)**m = 26%.
    assert (p.min(axis=1) < alpha).mean() > 0.2


@pytest.mark.parametrize("tests", [1, 6, 18])
def test_min_trials_can_reach_the_holm_level_and_one_fewer_cannot_without_margin(tests):
    alpha = 0.01
    n = stats.min_trials_for(tests, alpha)
    bare = n - stats.REACH_MARGIN_TRIALS
    assert 2.0**-bare < alpha / tests <= 2.0 ** -(bare - 1)
    all_slower = np.full(n, 0.1) + np.arange(n) * 1e-3
    assert scipy_stats.wilcoxon(all_slower, alternative="greater").pvalue < alpha / tests


def test_wilcoxon_on_ties_is_no_evidence():
    assert stats.wilcoxon_p(np.zeros(12), "greater") == 1.0


def test_median_ci_of_identical_pairs_is_a_point():
    assert stats.median_ci(np.full(10, 0.01)) == (0.01, 0.01)


def test_median_ci_is_a_seeded_percentile_bootstrap_of_the_median():
    d = 0.02 + 0.01 * np.random.default_rng(0).standard_normal(30)
    d[1] = d[0]  # the first two equal, not all
    low, high = stats.median_ci(d)
    assert low < np.median(d) < high
    assert (low, high) == stats.median_ci(d)  # seeded
    direct = scipy_stats.bootstrap((d,), np.median, n_resamples=2000, confidence_level=0.95, method="percentile",
                                   vectorized=True, rng=np.random.default_rng(0)).confidence_interval
    assert (low, high) == (direct.low, direct.high)
    assert isinstance(low, float) and isinstance(high, float)


@pytest.mark.parametrize("seed, resamples", [(None, None), (7, 50)])
def test_both_intervals_ask_scipy_for_a_seeded_percentile_bootstrap_at_95_percent(monkeypatch, seed, resamples):
    """What each interval asks of scipy.stats.bootstrap, read off the call (None: the defaults, seed 0 and 2000
    resamples): the medians' lumpy bootstrap distribution often lands on the same end points whatever the
    seed, so the values alone cannot show it."""
    asked = []

    def bootstrap(samples, statistic, **options):
        asked.append((len(samples), options))
        return type("Result", (), {"confidence_interval": type("CI", (), {"low": -1.0, "high": 2.0})})()

    monkeypatch.setattr(stats.stats, "bootstrap", bootstrap)
    d = np.array([0.1, 0.2, 0.3])
    given = {} if seed is None else {"seed": seed, "resamples": resamples}
    assert stats.median_ci(d, **given) == (-1.0, 2.0)
    assert stats.ratio_ci(d, d, **given) == (-1.0, 2.0)
    for (n, options), samples in zip(asked, (1, 2), strict=True):
        rng = options.pop("rng")
        assert n == samples and options == {"n_resamples": resamples or 2000, "confidence_level": 0.95,
                                             "method": "percentile", "vectorized": True}
        assert rng.random() == np.random.default_rng(seed or 0).random()


def test_log_ratios_are_head_over_base():
    assert stats.log_ratios([2.0, 1.0], [1.0, 1.0]) == pytest.approx([math.log(2.0), 0.0])


# ---- the verdict tree ------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio, p_slower, p_faster, across, expected", [
    (1.10, 0.001, 1.0, (None, None), (stats.REGRESSION, stats.SLOWER)),
    (1.10, 0.02, 1.0, (None, None), (stats.NOT_SIGNIFICANT, stats.NOISE)),
    (1.10, 0.01, 1.0, (None, None), (stats.NOT_SIGNIFICANT, stats.NOISE)),  # p must lie strictly below alpha
    (1.10, math.nan, 1.0, (None, None), (stats.NOT_SIGNIFICANT, stats.NOISE)),  # no p: no evidence
    (1.10, 0.001, 1.0, (0.001, None), (stats.REGRESSION, stats.SLOWER)),
    (1.10, 0.001, 1.0, (0.5, None), (stats.NOT_SIGNIFICANT, stats.PROCESS_NOISE)),
    (1.10, 0.5, 1.0, (0.5, None), (stats.NOT_SIGNIFICANT, stats.NOISE)),
    (1.10, 0.001, 1.0, (0.01, None), (stats.NOT_SIGNIFICANT, stats.PROCESS_NOISE)),  # across p at alpha: no
    (1.10, 0.01, 1.0, (0.5, None), (stats.NOT_SIGNIFICANT, stats.NOISE)),  # within p at alpha: noise, not process
    (1.05, 0.001, 1.0, (None, None), (stats.OK, stats.SIGNIFICANT)),  # at the limit: not beyond it
    (1.03, 0.001, 1.0, (0.5, None), (stats.OK, stats.NOTHING)),  # the across test does not reject
    (1.03, 0.5, 1.0, (None, None), (stats.OK, stats.NOTHING)),
    (1.00, 0.001, 1.0, (None, None), (stats.OK, stats.NOTHING)),  # not slower at all
    (0.90, 1.0, 0.001, (None, None), (stats.FASTER, stats.NOTHING)),
    (0.90, 1.0, 0.001, (None, 0.001), (stats.FASTER, stats.NOTHING)),
    (0.90, 1.0, 0.001, (None, 0.5), (stats.OK, stats.NOTHING)),
    (0.90, 1.0, 0.001, (None, 0.01), (stats.OK, stats.NOTHING)),  # across p at alpha: not faster
    (0.90, 1.0, 0.01, (None, None), (stats.OK, stats.NOTHING)),
    (0.96, 1.0, 0.001, (None, None), (stats.OK, stats.NOTHING)),  # faster, but within the allowed
])
def test_verdict_needs_size_and_every_test(ratio, p_slower, p_faster, across, expected):
    assert stats.verdict(ratio, 0.05, 0.01, p_slower, p_faster, *across) == expected


def test_process_t_p_is_scipy_s_one_sided_t_test_and_decides_equal_medians_by_their_sign():
    medians = np.array([0.10, 0.20, 0.15, 0.05])
    for alternative in ("greater", "less"):
        expected = scipy_stats.ttest_1samp(medians, 0.0, alternative=alternative).pvalue
        assert stats.process_t_p(medians, alternative) == pytest.approx(expected, rel=1e-12)
    assert stats.process_t_p(medians, "greater") < 0.02 and stats.process_t_p(medians, "less") > 0.98
    # Every pair the same median: no spread to test with, so the sign decides, either way round.
    assert stats.process_t_p(np.array([0.1, 0.1, 0.1]), "greater") == 0.0
    assert stats.process_t_p(np.array([0.1, 0.1, 0.1]), "less") == 1.0
    assert stats.process_t_p(np.array([-0.1, -0.1]), "less") == 0.0
    assert stats.process_t_p(np.array([-0.1, -0.1]), "greater") == 1.0
    assert stats.process_t_p(np.array([0.0, 0.0, 0.0]), "greater") == 1.0
    assert stats.process_t_p(np.array([0.3]), "greater") is None  # one pair: nothing to test across
    assert stats.process_t_p(np.array([]), "less") is None


def test_wilcoxon_p_is_one_sided_in_the_direction_asked():
    d = np.linspace(0.01, 0.1, 10)  # every pair slower: the one-sided p is exactly 2**-10
    assert stats.wilcoxon_p(d, "greater") == pytest.approx(2.0**-10, rel=1e-9)
    assert stats.wilcoxon_p(d, "less") > 0.99
    assert stats.wilcoxon_p(-d, "less") == pytest.approx(2.0**-10, rel=1e-9)
    assert stats.wilcoxon_p(np.ones(10), "greater") == pytest.approx(2.0**-10, rel=1e-9)  # not a tie: all +1


# ---- the guards in front of scipy: what each answers without asking it ------------------------------


def refuse(*_args, **_kwargs):
    raise AssertionError("scipy was asked although the answer needs no test")


def test_a_point_interval_and_a_tie_need_no_scipy(monkeypatch):
    """Every value equal: the median's interval is that point, and a Wilcoxon test on all-zero log ratios is no
    evidence (p = 1). Both are answered before scipy, whose handling of degenerate samples varies by release
    (a warning and NaN, or an error)."""
    monkeypatch.setattr(stats.stats, "bootstrap", refuse)
    monkeypatch.setattr(stats.stats, "wilcoxon", refuse)
    assert stats.median_ci(np.full(6, -0.25)) == (-0.25, -0.25)
    assert stats.median_ci(np.array([0.3])) == (0.3, 0.3)  # one pair
    assert stats.wilcoxon_p(np.zeros(8), "greater") == 1.0 and stats.wilcoxon_p(np.zeros(8), "less") == 1.0


def test_a_nan_from_mann_whitney_is_no_evidence(monkeypatch):
    """A release of scipy that answers NaN for samples with no difference to rank must not read as a p-value."""
    monkeypatch.setattr(stats.stats, "mannwhitneyu", lambda *_a, **_k: type("R", (), {"pvalue": math.nan})())
    assert stats.mann_whitney_p([1.0] * 5, [1.0] * 5, "greater") == 1.0
