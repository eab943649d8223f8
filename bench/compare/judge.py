"""The verdict of a compare, from its record alone: the paired tests per case, Holm across cases, and the
gate's pair rules (see bench.compare for the method)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.compare.record import FAILED, CompareRecord
from bench.core import telemetry
from bench.core.records import RunRecord
from bench.gate import rules as gate
from bench.gate import stats
from bench.gate.stats import REGRESSION, median_ci

# The rules of the stored-baseline gate that compare applies to the head's records against the base's, by
# name: an allow-list. A rule added to bench.gate.rules.RULES is applied here only once it is named here; until it
# is named here or in NOT_PAIR_RULES, with the reason, tests/compare/test_compare.py fails.
PAIR_RULE_NAMES = frozenset({"device_time", "counters", "memory"})
# The gate's other rules, each with why compare does not apply it.
NOT_PAIR_RULES = {
    "latency": "replaced by the paired test",
    "coverage": "replaced by the new and removed cases",
    "errors": "replaced by the failed cases",
    "speedup": "an in-run check of `bench run`, not base against head",
    "equivalence": "an in-run check of `bench run`, not base against head",
    "stage_consistency": "an in-run check of `bench run`, not base against head",
}
PAIR_RULES: tuple[gate.Rule, ...] = tuple(rule for rule in gate.RULES if rule.name in PAIR_RULE_NAMES)


@dataclass(frozen=True)
class PairedComparison:
    name: str
    trials: int
    base_median_ms: float
    head_median_ms: float
    ratio: float  # exp(median log ratio): the typical head/base ratio of one trial
    ci_low: float
    ci_high: float
    p_slower: float  # one-sided Wilcoxon, before Holm
    p_adjusted: float  # Holm-adjusted across the run's paired cases
    threshold: float
    verdict: str
    stopped: str
    note: str = ""
    processes: int = 1  # process pairs that ran trials
    p_process: float | None = None  # one-sided t-test across the per-pair median log ratios; None with k < 2
    p_process_adjusted: float | None = None  # Holm-adjusted across the run's paired cases
    process_spread: float | None = None  # SD of the per-pair median log ratios
    within_spread: float = 0.0  # pooled SD of the log ratios about their pair's median
    gpu_note: str | None = None  # bench.core.telemetry.sm_clock_note: the GPU's clocks or throttling may explain it

    @property
    def failure(self) -> str | None:
        return f"{self.name}: {self.note}" if self.verdict == REGRESSION else None


@dataclass(frozen=True)
class CompareReport(gate.Outcome):
    record: CompareRecord
    comparisons: tuple[PairedComparison, ...]
    findings: tuple[gate.Finding, ...]  # PAIR_RULES on the head's records against the base's
    notes: tuple[str, ...]

    @property
    def failures(self) -> tuple[str, ...]:
        out = [c.failure for c in self.comparisons if c.failure]
        out += [f"{u.name}: failed on the head: {first_line(u.reason)}" for u in self.record.unpaired
                if u.status == FAILED]
        out += [f.failure for f in self.findings if f.failure]
        return tuple(out)


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def judge(record: CompareRecord) -> CompareReport:
    """Every paired case's verdict (Holm across them) and the pair rules; pure, from the record alone.

    A regression needs size (median ratio > 1 + threshold), the within-process Wilcoxon test and, where
    the case ran in two or more process pairs, the across-process t-test: both Holm-adjusted p < alpha."""
    criteria = record.criteria
    config = criteria.gate_config()
    raw = []
    for pair in record.pairs:
        d = pair.log_ratios
        lo, hi = median_ci(d, seed=record.seed)
        medians = pair.process_medians()
        raw.append((pair, d, lo, hi, stats.wilcoxon_p(d, "greater"), stats.wilcoxon_p(d, "less"),
                    stats.process_t_p(medians, "greater"), stats.process_t_p(medians, "less")))
    slower_adj = stats.holm([r[4] for r in raw])
    faster_adj = stats.holm([r[5] for r in raw])
    proc_slower_adj = stats.holm_optional([r[6] for r in raw])
    proc_faster_adj = stats.holm_optional([r[7] for r in raw])
    comparisons = []
    for (pair, d, lo, hi, p_slower, _, p_proc, _), p_adj, p_faster_adj, pp_adj, pf_adj in zip(
            raw, slower_adj, faster_adj, proc_slower_adj, proc_faster_adj, strict=True):
        threshold = config.threshold_for(pair.name)
        ratio = math.exp(float(np.median(d)))
        k = len(pair.process_medians())
        spread = pair.process_spread()
        change = (f"median paired ratio {ratio:.3f} [{math.exp(lo):.3f}, {math.exp(hi):.3f}] over {len(d)} trials "
                  f"in {k} process pair{'s' if k != 1 else ''} "
                  f"(head {pair.head.median_ms:.2f} ms, base {pair.base.median_ms:.2f} ms)")
        verdict, why = stats.verdict(ratio, threshold, criteria.alpha, p_adj, p_faster_adj, pp_adj, pf_adj)
        if why == stats.PROCESS_NOISE:
            note = (f"{change} with Holm-adjusted p={p_adj:.2g}, but across the process pairs "
                    f"(spread {spread:.1%}) Holm-adjusted p={pp_adj:.2g} >= {criteria.alpha:g}: "
                    "a process-level difference, not one of the code")
        elif why == stats.SLOWER:
            across = ("" if pp_adj is None else
                      f" and across {k} process pairs p={pp_adj:.2g}")
            alone = "" if pp_adj is not None else " (one process pair: process bias not measured)"
            note = (f"{change} > +{threshold:.1%} with Holm-adjusted p={p_adj:.2g}{across} < "
                    f"{criteria.alpha:g}: the head is slower{alone}")
        elif why == stats.NOISE:
            note = f"{change} but Holm-adjusted p={p_adj:.2g} >= {criteria.alpha:g}"
        elif why == stats.SIGNIFICANT:
            note = f"{change}: significant but within +{threshold:.1%}"
        else:
            note = ""
        gpu_note = telemetry.sm_clock_note(list(pair.head_gpu), list(pair.base_gpu))
        if gpu_note and verdict == REGRESSION:
            # Still a regression (exit 1): the timing stands, but the GPU may explain it; rerun to tell.
            note += f"; but the GPU may explain it: {gpu_note}"
        comparisons.append(PairedComparison(
            pair.name, len(d), pair.base.median_ms, pair.head.median_ms, ratio, math.exp(lo), math.exp(hi),
            p_slower, p_adj, threshold, verdict, pair.stopped, note, k, p_proc, pp_adj, spread,
            pair.within_process_spread(), gpu_note))
    findings: tuple[gate.Finding, ...] = ()
    if record.pairs:
        head_run = RunRecord(record.head.environment, tuple(p.head for p in record.pairs))
        base_run = RunRecord(record.base.environment, tuple(p.base for p in record.pairs))
        findings = gate.evaluate(head_run, base_run, config, rules=PAIR_RULES).findings
    notes = [f"{c.name}: {c.note}" for c in comparisons if c.note and not c.failure]
    notes += [f"{u.name}: {u.status}: {first_line(u.reason)}" for u in record.unpaired if u.status != FAILED]
    if not record.pairs:
        notes.append("no case ran on both sides: nothing was compared")
    return CompareReport(record, tuple(comparisons), findings, tuple(notes))
