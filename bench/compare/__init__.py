"""`python -m bench compare --base REF`: base and head measured in one job, interleaved, and judged on paired ratios.

Two processes on one device run the head's benchmark code (bench.compare.worker); the base's imports
its cosmos3 from a temporary `git worktree` of REF, the head's from the working tree. Per case
both warm up, then each trial runs one synchronised round on each side in a seeded random order,
one side at a time, so slow drifts of the machine (clocks, host load) hit both sides of a pair
alike. The per-trial log ratio head/base carries the verdict:

- estimate: the median ratio, exp(median log ratio), with a CI_LEVEL (bench.gate.stats) bootstrap interval;
- test: one-sided Wilcoxon signed-rank on the log ratios (is the head slower?), Holm-adjusted
  across the run's cases, so that a whole compare raises a false alarm with probability <= alpha;
- regression: median ratio > 1 + threshold and adjusted p < alpha.

Holm bounds the false alarms that trial-to-trial noise can cause. An offset that lasts as long as
a worker process (core placement, thread pool, allocator, address layout) is not trial-to-trial
noise: with one process per side it is the same in every trial, and the Wilcoxon test alone counts
it as a difference. So each side runs in `processes` (k) worker processes, started together as k
(head, base) process pairs; the trials of a case go to the pairs in shuffled blocks (each block
one trial per pair, in a seeded random order), and every trial records its pair (`process`). The
process pair is then a unit of variation: with k >= 2 a regression also needs a one-sided
one-sample t-test across the k per-pair median log ratios (Holm-adjusted across cases as well)
to reject at alpha. Each of the two tests alone keeps its false alarms <= alpha; requiring both
(an intersection-union test) keeps them <= alpha too, and the across-process test holds whatever
the size of the process bias, since the k pairs are independent fresh processes. With k = 1 the
process bias is neither randomized nor measured, and the verdict says so.

Trials stop (see `stop_reason`) once the interval lies below the limit, or is narrower than the
threshold, or the case's round-time budget is spent; never before the minimum that lets the test
reach significance. Device time, work counters and memory (the gate rules in PAIR_RULE_NAMES) are
judged as against a stored baseline. Statistics are derived from the raw pairs in compare.json, never stored.
"""
