"""One line per check of `bash tools/gpu-evidence.sh smoke`: `PASS <check>: <figure>` or `FAIL <check>: <why>`.

    PYTHONPATH=. python3 tools/smoke_summary.py bench --rc 0 --wall-s 301 --run results/evidence/full-1
    PYTHONPATH=. python3 tools/smoke_summary.py compare --rc 0 --wall-s 48 --run results/evidence/smoke-compare
    PYTHONPATH=. python3 tools/smoke_summary.py first-frame --rc 0 --wall-s 41 --json results/evidence/smoke-first-frame.json

It reads only what the run left (run.json, compare.json, the speed tool's JSON) and the exit status the script
saw; it measures nothing. Its own exit status is 0 whatever the verdict: the line is the verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.compare.judge import judge
from bench.compare.record import COMPARE_RECORD, load_compare
from bench.core.records import load_run
from bench.core.strategies import FIRST_FRAME_2D

RUN_RECORD = "run.json"
CUT = {124: "cut at its time limit (timeout)", 137: "killed at its time limit"}
FIRST_FRAME_SIZES = ("1280x720", "832x480")
SPEED_3D, SPEED_2D = "single_frame (3D)", "first_frame_2d eager"


def exited(rc: int) -> str:
    return CUT.get(rc, f"exit {rc}")


def bench_line(rc: int, wall_s: float, run: Path) -> str:
    """The default suite: its exit status is the gate's verdict (in-run checks only, with no baseline)."""
    if not (run / RUN_RECORD).is_file():
        return f"FAIL bench: {exited(rc)} after {wall_s:.0f} s, no {RUN_RECORD}: it crashed or was cut"
    record = load_run(run / RUN_RECORD)
    medians = {c.spec.name: statistics.median(c.samples_ms) for c in record.cases if c.samples_ms}
    ratio = ""
    for size in FIRST_FRAME_SIZES:  # the 1.5x check is gated at 1280x720 only; both factors are reported
        sf, ff = (medians.get(f"latent_prep[{s}-{size}-81f]") for s in ("single_frame", "first_frame_2d"))
        if sf and ff:
            ratio += f"; latent_prep {size} 81f single_frame / first_frame_2d {sf / ff:.2f}x ({sf:.1f} / {ff:.1f} ms)"
    suite = record.environment.suite_wall_s
    figure = (f"{len(record.cases)} benchmarks, suite {suite:.0f} s, step {wall_s:.0f} s on "
              f"{record.environment.device_name}{ratio}")
    if rc == 0:
        return f"PASS bench: {figure}"
    return f"FAIL bench: {exited(rc)}: the gate failed the run (its report says why); {figure}"


def compare_line(rc: int, wall_s: float, run: Path) -> str:
    """An A/A compare: it must pass, with its median paired ratios near 1."""
    if not (run / COMPARE_RECORD).is_file():
        return f"FAIL compare: {exited(rc)} after {wall_s:.0f} s, no {COMPARE_RECORD}: it crashed or was cut"
    report = judge(load_compare(run / COMPARE_RECORD))
    ratios = ", ".join(f"{c.name} {c.ratio:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}] in {c.trials} trials"
                       for c in report.comparisons)
    figure = f"median paired ratio head/base {ratios or 'none'}; {wall_s:.0f} s"
    if rc == 0 and report.passed:
        return f"PASS compare: A/A {figure}"
    why = "; ".join(report.failures) or exited(rc)
    return f"FAIL compare: {exited(rc)}: {why}; {figure}"


def first_frame_line(rc: int, wall_s: float, path: Path, min_speedup: float = FIRST_FRAME_2D.default_min_speedup) -> str:
    """first_frame_2d (eager) against the 3D single-frame encode at the first resolution measured."""
    if not path.is_file():
        return f"FAIL first-frame: {exited(rc)} after {wall_s:.0f} s, no {path.name}: it crashed or was cut"
    data = json.loads(path.read_text())
    if not data["results"]:
        return f"FAIL first-frame: {exited(rc)} after {wall_s:.0f} s, before any resolution was measured"
    res = data["results"][0]
    size = f"{res['width']}x{res['height']}"
    medians = {v["name"]: statistics.median(v["samples_ms"]) for v in res["variants"] if v["samples_ms"]}
    if SPEED_3D not in medians or SPEED_2D not in medians:
        return f"FAIL first-frame: {size}: {SPEED_3D} or {SPEED_2D} not measured (see the JSON's skipped reasons)"
    factor = medians[SPEED_3D] / medians[SPEED_2D]
    best = min(medians, key=medians.get)
    errors = res["errors"]
    equivalent = ("not checked (cut short)" if errors is None
                  else "all equivalent" if all(e["equivalent"] for e in errors)
                  else "NOT equivalent: " + ", ".join(sorted({e["path"] for e in errors if not e["equivalent"]})))
    figure = (f"{size} first_frame_2d {factor:.2f}x single_frame ({medians[SPEED_2D]:.2f} vs "
              f"{medians[SPEED_3D]:.2f} ms; fastest {best} {medians[SPEED_3D] / medians[best]:.2f}x); "
              f"bf16 vs fp32 oracle: {equivalent}; {wall_s:.0f} s")
    if rc == 0 and errors is not None and factor >= min_speedup:
        return f"PASS first-frame: {figure}"
    why = exited(rc) if rc else f"below the {min_speedup:g}x the gate asks" if factor < min_speedup else "cut short"
    return f"FAIL first-frame: {why}: {figure}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=("bench", "compare", "first-frame"))
    p.add_argument("--rc", type=int, required=True, help="the exit status the script saw")
    p.add_argument("--wall-s", type=float, required=True, help="the step's wall time, as the script measured it")
    p.add_argument("--run", type=Path, help="the run's folder (bench, compare)")
    p.add_argument("--json", type=Path, help="the speed tool's JSON (first-frame)")
    args = p.parse_args(argv)
    if (args.check == "first-frame") != (args.json is not None) or (args.check != "first-frame") != bool(args.run):
        p.error("bench and compare take --run, first-frame takes --json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.check == "bench":
            line = bench_line(args.rc, args.wall_s, args.run)
        elif args.check == "compare":
            line = compare_line(args.rc, args.wall_s, args.run)
        else:
            line = first_frame_line(args.rc, args.wall_s, args.json)
    except Exception as exc:  # noqa: BLE001 -- a record it cannot read is a failed check, said in one line
        line = f"FAIL {args.check}: {exited(args.rc)}; its record could not be read: {type(exc).__name__}: {exc}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
