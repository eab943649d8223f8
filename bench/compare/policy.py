"""How long and in how many worker processes a compare measures each case: trials, budgets, stopping."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from bench.gate.stats import median_ci
from bench.measure.controls import RoundPolicy
from cosmos3.errors import InputError

DEFAULT_THRESHOLD = 0.02  # a paired median ratio above 1.02 is a regression (when significant)
# Trials per case. At least MIN_TRIALS, and at least enough for the Holm-adjusted Wilcoxon test to
# be able to reach alpha (see bench.gate.stats.min_trials_for); at most MAX_TRIALS.
MIN_TRIALS = 10
MAX_TRIALS = 400
# Beyond the minimum, a case's trials stop when the sum of both sides' round times reaches its
# budget: a few seconds on a GPU (about 90 trials of a 22 ms stage), more on the CPU's noisier rounds.
CASE_BUDGET_S = {"cuda": 4.0, "cpu": 6.0}
# The stopping rule's bootstrap runs at n_min and then each time n has grown by this factor, so its
# cost (tens of ms on a loaded host) stays small beside the rounds it judges.
CHECK_GROWTH = 1.2
TRIAL_ORDER_SEED = 0


# Worker process pairs per compare (see the module docstring); at least MIN_TRIALS_PER_PROCESS trials each.
# With a fixed round-time budget the across-pair t statistic does not grow with k; only its degrees of
# freedom do, and with them the critical value falls: one-sided at Holm's 0.01/3, t > 7.45 with 4 pairs
# (3 dof), t > 3.9 with 8 (7 dof). GPU-bound cases vary little from trial to trial, so 4 pairs do there
# (each worker also holds the models and its allocator's peak on the one GPU); CPU rounds vary by 20% and
# more on a loaded 2-core host, where 8 pairs (16 workers) and a longer budget catch a +10% change.
DEFAULT_PROCESSES_BY_DEVICE = {"cuda": 4, "cpu": 8}
DEFAULT_PROCESSES = DEFAULT_PROCESSES_BY_DEVICE["cuda"]
# How workers start: "exec", each a fresh `python -m bench.compare.worker`; "fork", each forked from one server that
# has imported torch, diffusers and transformers (bench.compare.forkserver): about 6 s of CPU less per worker.
# Fork only where no GPU is used: CUDA cannot be used in a process forked after it was initialised.
WORKER_STARTS = ("exec", "fork")
DEFAULT_START_BY_DEVICE = {"cuda": "exec", "cpu": "fork"}


def default_processes(device_kind: str) -> int:
    """The worker pairs a compare runs on `device_kind` ("cuda" or "cpu") unless told otherwise."""
    return DEFAULT_PROCESSES_BY_DEVICE.get(device_kind, DEFAULT_PROCESSES)


MIN_TRIALS_PER_PROCESS = 3
MAX_PROCESSES = 32


def default_start(device_kind: str) -> str:
    return DEFAULT_START_BY_DEVICE.get(device_kind, "exec")


def check_start(start: object) -> None:
    if start not in WORKER_STARTS:
        raise InputError("worker_start", f"must be one of {', '.join(WORKER_STARTS)}", start)


def check_processes(k: object) -> None:
    """1 (no process test) or 3 to MAX_PROCESSES pairs. Two pairs leave the across-pair t-test one degree
    of freedom: a one-sided p < 0.01 then needs t > 31.8, an effect 22 times the pair spread, so a 4x
    slowdown with an 8% pair spread would pass as "not significant"."""
    if isinstance(k, bool) or not isinstance(k, int) or not (k == 1 or 3 <= k <= MAX_PROCESSES):
        raise InputError("processes", f"must be 1, or 3 to {MAX_PROCESSES} worker pairs (with 2 the across-pair "
                         "t-test has one degree of freedom and cannot tell a large slowdown from process noise)", k)


@dataclass(frozen=True)
class TrialPolicy:
    """How long each case is measured; `--rounds WARMUP,MIN,MAX,TARGET_MS` sets all four."""

    warmup_rounds: int | None = None  # per side; None: each kind's own (bench.measure.workloads)
    min_trials: int = MIN_TRIALS
    max_trials: int = MAX_TRIALS
    budget_s: float = CASE_BUDGET_S["cuda"]  # both sides' round times, summed, per case

    def __post_init__(self) -> None:
        if not 2 <= self.min_trials <= self.max_trials:
            raise InputError("rounds", "needs 2 <= MIN <= MAX trials", self)
        if not (math.isfinite(self.budget_s) and self.budget_s > 0):
            raise InputError("rounds", "needs a finite budget > 0", self)

    def at_least(self, n_min: int) -> TrialPolicy:
        """This policy with at least `n_min` trials (see min_trials_for)."""
        return dataclasses.replace(self, min_trials=max(self.min_trials, n_min),
                                   max_trials=max(self.max_trials, n_min))

    @classmethod
    def for_device(cls, device_kind: str, rounds: RoundPolicy | None) -> TrialPolicy:
        if rounds is not None:
            return cls(rounds.warmup_rounds, rounds.min_rounds, rounds.max_rounds, rounds.target_ms / 1e3)
        return cls(budget_s=CASE_BUDGET_S.get(device_kind, CASE_BUDGET_S["cuda"]))


def stop_reason(d: np.ndarray, threshold: float, *, n_min: int, max_trials: int, spent_s: float, budget_s: float,
                check: bool, seed: int = 0) -> str | None:
    """Why a case's trials stop now, or None to go on. With L = log(1 + threshold) and [lo, hi] the
    CI_LEVEL bootstrap interval of the median log ratio, after at least n_min pairs:

    - "within"      hi < L: the head is not slower than allowed (the interval lies below the limit);
    - "resolved"    (hi - lo) / 2 < L / 2: the interval is narrower than the threshold, so the estimate
                    is as sharp as a decision at the threshold needs;
    - "budget"      both sides' rounds of this case have taken budget_s;
    - "max trials"  n = max_trials.

    An interval above the limit is deliberately not a reason: stopping on data that look slow is
    optional stopping and would raise the test's false-alarm rate above alpha; stopping on data that
    look fine (or on precision alone) does not. A real regression so gets its full budget of trials.
    The interval is recomputed only when `check` is set (see CHECK_GROWTH); budget and count every time.
    """
    n = len(d)
    if n >= max_trials:
        return "max trials"
    if n < n_min:
        return None
    if check:
        limit = math.log1p(threshold)
        lo, hi = median_ci(d, seed=seed)
        if hi < limit:
            return "within"
        if (hi - lo) / 2 < limit / 2:
            return "resolved"
    if spent_s >= budget_s:
        return "budget"
    return None
