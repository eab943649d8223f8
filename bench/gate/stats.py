"""The statistics of the gate (bench.gate.rules) and compare (bench.compare), and so of calibration: one place each.

- a stored baseline against a run: the ratio of medians, its percentile-bootstrap interval (ratio_ci),
  a one-sided Mann-Whitney test (mann_whitney_p, testable) and the spread of a merged baseline's run
  medians (run_to_run_cv);
- interleaved pairs (compare): the log ratios, the bootstrap interval of their median (median_ci), a
  one-sided Wilcoxon signed-rank test (wilcoxon_p), a t-test across process pairs (process_t_p), Holm's
  adjustment across cases (holm) and the trials a case needs (min_trials_for);
- both: one verdict tree (verdict) that a median ratio and its p-values go through.

Numbers go in; numbers and verdict words come out. The notes that explain a verdict are the gate's
and compare's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

# The ratio's confidence interval is descriptive (the verdict rests on the rank tests), so it uses the
# customary 95% rather than following alpha.
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
# Below this many rounds on either side no test is attempted; the harness never records fewer than 5.
MIN_SAMPLES = 3
# A standard deviation of fewer run medians than this is too rough to widen a threshold with.
MIN_RUNS_FOR_NOISE = 3
# With n pairs the smallest one-sided Wilcoxon p is 2**-n (every pair slower). These extra trials
# beyond that bare minimum let a pair or two go the other way and still reach significance.
REACH_MARGIN_TRIALS = 2

# Verdicts of a median ratio (the gate's words; compare's where they mean the same).
OK = "ok"
FASTER = "faster"
REGRESSION = "regression"
NOT_SIGNIFICANT = "not significant"  # slower than the threshold, but within the noise

# Why `verdict` gave its verdict, for the caller's note: its second answer.
SLOWER = "slower"  # REGRESSION: slower than allowed, and every test rejects at alpha
NOISE = "noise"  # NOT_SIGNIFICANT: slower than allowed, but the within-run test does not reject
PROCESS_NOISE = "process noise"  # NOT_SIGNIFICANT: the within-run test rejects, the across-process one does not
SIGNIFICANT = "significant"  # OK: significantly slower, but within the allowed
NOTHING = ""  # FASTER, or OK with nothing to say


def _percentile_bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], *, resamples: int,
                          seed: int) -> tuple[float, float]:
    # Percentile, not BCa: the bootstrap distribution of a small sample's median is lumpy and BCa's
    # jackknife acceleration estimate for a median is unreliable (and undefined on tied data).
    result = stats.bootstrap(
        samples,
        statistic,
        n_resamples=resamples,
        confidence_level=CI_LEVEL,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def ratio_ci(current: np.ndarray, baseline: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
             seed: int = 0) -> tuple[float, float]:
    """CI_LEVEL percentile-bootstrap interval of median(current) / median(baseline), seeded."""

    def ratio_of_medians(cur: np.ndarray, base: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(cur, axis=axis) / np.median(base, axis=axis)

    return _percentile_bootstrap((current, baseline), ratio_of_medians, resamples=resamples, seed=seed)


def mann_whitney_p(current: np.ndarray, baseline: np.ndarray, alternative: str) -> float:
    """One-sided Mann-Whitney p (alternative "greater": is `current` slower?)."""
    p = float(stats.mannwhitneyu(current, baseline, alternative=alternative).pvalue)
    # NaN only arises when every value on both sides is equal: no evidence of any difference.
    return 1.0 if math.isnan(p) else p


def testable(n_current: int, n_baseline: int, alpha: float) -> bool:
    """Whether a one-sided Mann-Whitney test on these sample sizes could ever reject at alpha."""
    # The smallest one-sided p-value Mann-Whitney can give is 1 / C(n1 + n2, n1); when even that is
    # not below alpha, no slowdown could ever be detected and "ok" would be a false assurance.
    if min(n_current, n_baseline) < MIN_SAMPLES:
        return False
    return 1 / math.comb(n_current + n_baseline, n_current) < alpha


def run_to_run_cv(run_medians: Sequence[float]) -> float | None:
    """Relative standard deviation of a merged baseline's per-run medians; None below MIN_RUNS_FOR_NOISE runs."""
    medians = np.asarray(run_medians)
    if len(medians) < MIN_RUNS_FOR_NOISE:
        return None
    return float(np.std(medians, ddof=1) / np.mean(medians))


def log_ratios(head_ms: Sequence[float], base_ms: Sequence[float]) -> np.ndarray:
    return np.log(np.asarray(head_ms, dtype=float)) - np.log(np.asarray(base_ms, dtype=float))


def median_ci(d: np.ndarray, *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """CI_LEVEL percentile-bootstrap interval of the median of `d` (a point where every value is equal)."""
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    return _percentile_bootstrap((d,), np.median, resamples=resamples, seed=seed)


def wilcoxon_p(d: np.ndarray, alternative: str) -> float:
    """One-sided Wilcoxon signed-rank p on the log ratios; 1 where every pair is a tie (no evidence)."""
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative=alternative).pvalue)


def process_t_p(medians: np.ndarray, alternative: str) -> float | None:
    """One-sided one-sample t-test that the per-process-pair median log ratios centre on 0 (is the head
    slower / faster?); None with fewer than two pairs. Equal medians are decided by their sign."""
    if len(medians) < 2:
        return None
    if np.all(medians == medians[0]):
        sign = 1 if alternative == "greater" else -1
        return 0.0 if sign * medians[0] > 0 else 1.0
    return float(stats.ttest_1samp(medians, 0.0, alternative=alternative).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order.

    Sorted ascending, p_(k) is multiplied by (m - k + 1); each adjusted value is the running
    maximum of those, capped at 1. Rejecting where the adjusted p < alpha is Holm's procedure, and
    keeps the chance of any false rejection among the m at or below alpha, whatever their dependence.
    """
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def holm_optional(p_values: Sequence[float | None]) -> list[float | None]:
    """holm over the p-values present; None stays None (a test that did not run)."""
    present = [i for i, p in enumerate(p_values) if p is not None]
    adjusted = holm([p_values[i] for i in present])
    out: list[float | None] = [None] * len(p_values)
    for i, p in zip(present, adjusted, strict=True):
        out[i] = p
    return out


def min_trials_for(tests: int, alpha: float) -> int:
    """The fewest pairs with which a one-sided Wilcoxon test can reach alpha / tests (Holm's strictest
    level): 2**-n < alpha / tests, plus REACH_MARGIN_TRIALS."""
    return math.floor(math.log2(max(tests, 1) / alpha)) + 1 + REACH_MARGIN_TRIALS


def verdict(ratio: float, allowed: float, alpha: float, p_slower: float, p_faster: float,
            p_slower_across: float | None = None, p_faster_across: float | None = None) -> tuple[str, str]:
    """The verdict on a ratio of medians (new / old) and why (SLOWER, NOISE, ...), for its caller to word.

    A regression needs size (ratio > 1 + allowed) and significance: the one-sided p_slower < alpha and,
    where an across-process test ran (p_slower_across not None), that one < alpha too. "faster" needs the
    same the other way (ratio < 1 - allowed). A significant slowdown within the allowed is "ok", and says so.
    """
    across_slower = p_slower_across is None or p_slower_across < alpha
    across_faster = p_faster_across is None or p_faster_across < alpha
    if ratio > 1 + allowed:
        if p_slower < alpha and not across_slower:
            return NOT_SIGNIFICANT, PROCESS_NOISE
        if p_slower < alpha:
            return REGRESSION, SLOWER
        return NOT_SIGNIFICANT, NOISE
    if ratio < 1 - allowed and p_faster < alpha and across_faster:
        return FASTER, NOTHING
    if ratio > 1 and p_slower < alpha and across_slower:
        return OK, SIGNIFICANT
    return OK, NOTHING
