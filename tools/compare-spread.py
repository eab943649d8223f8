"""Summarise several `python -m bench compare` runs: per case, how the paired ratio spread and what was flagged.

    PYTHONPATH=. python3 tools/compare-spread.py results/compare-aa-*      # A/A: the noise floor, false alarms
    PYTHONPATH=. python3 tools/compare-spread.py results/compare-inject-*  # injected: detection rate, smallest hit

Reads only compare.json (the raw pairs) and derives every statistic again, as the report does.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.compare.judge import judge
from bench.compare.record import COMPARE_RECORD, load_compare
from bench.gate.stats import REGRESSION


def main(run_dirs: list[str]) -> int:
    runs = [Path(d) for d in run_dirs if (Path(d) / COMPARE_RECORD).is_file()]
    if not runs:
        print(f"no {COMPARE_RECORD} under {' '.join(run_dirs)}", file=sys.stderr)
        return 2
    per_case: dict[str, list] = defaultdict(list)
    failed_runs = 0
    for run in runs:
        report = judge(load_compare(run / COMPARE_RECORD))
        failed_runs += not report.passed
        for c in report.comparisons:
            pair = next(p for p in report.record.pairs if p.name == c.name)
            d = pair.log_ratios
            q1, q3 = np.exp(np.percentile(d, [25, 75]))
            per_case[c.name].append((c.ratio, c.ci_low, c.ci_high, q1, q3, c.trials, c.verdict, c.stopped))
    print(f"{len(runs)} compares, {failed_runs} failed")
    print(f"{'case':42} {'runs':>4} {'median ratio: min':>17} {'median':>7} {'max':>7} {'CI half-width':>13} "
          f"{'trial IQR':>9} {'trials':>6} {'flagged':>7}")
    detected = []
    for name, rows in per_case.items():
        ratios = np.array([r[0] for r in rows])
        half = np.median([(r[2] - r[1]) / 2 for r in rows])
        iqr = np.median([r[4] - r[3] for r in rows])
        trials = int(np.median([r[5] for r in rows]))
        flagged = [r for r in rows if r[6] == REGRESSION]
        detected += [r[0] for r in flagged]
        print(f"{name:42} {len(rows):4d} {ratios.min():17.4f} {np.median(ratios):7.4f} {ratios.max():7.4f} "
              f"{half:13.4f} {iqr:9.4f} {trials:6d} {len(flagged):3d}/{len(rows):<3d}")
        stops = defaultdict(int)
        for r in rows:
            stops[r[7]] += 1
        print(f"{'':42} stopped: {', '.join(f'{k} x{v}' for k, v in sorted(stops.items()))}")
    if detected:
        print(f"smallest effect flagged as a regression: {min(detected) - 1:+.2%} (median paired ratio "
              f"{min(detected):.4f}); {len(detected)} regression verdicts in all")
    else:
        print("no case was flagged as a regression")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
