"""`bench calibrate`: the gate's runs (A/A, injected GPU work, controls) and `calibrate --compare`."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.calibrate import compare as compare_cal
from bench.calibrate import gate as calibrate_mod
from bench.cli import EXIT_PASS, child
from bench.cli.child import RUN_RECORD
from bench.cli.compare import processes_for, worker_start_for
from bench.cli.options import gate_config, run_controls
from bench.cli.plan import make_run_dir, plan_run, unused_name
from bench.compare import coordinator
from bench.compare.coordinator import CompareSettings
from bench.compare.judge import CompareReport
from bench.compare.policy import (
    DEFAULT_THRESHOLD,
)
from bench.compare.record import Criteria
from bench.compare.report import write_compare_run
from bench.core.environment import REPO_ROOT, display_path
from bench.core.records import (
    load_run,
    parse_pattern_values,
)
from bench.core.strategies import STRATEGIES
from bench.gate import rules as gate_mod
from cosmos3.errors import InputError
from cosmos3.paths import check_output_dir


def measure_calibration_run(args: argparse.Namespace, planned: calibrate_mod.PlannedRun, folder: Path,
                            cases: Sequence[str]) -> None:
    """One calibration run in its own process, into folder/runs/<run id>/, with the work it injects."""
    runs_dir = folder / "runs"
    controls = dataclasses.replace(
        run_controls(args),
        gpu_work=parse_pattern_values([f"*={planned.size:g}"], "inject_gpu_work") if planned.size else {},
        syncs=("*",) if planned.control == "sync" else (),
        kernels=("*",) if planned.control == "kernel" else ())
    run_dir = runs_dir / planned.run_id
    if run_dir.exists():  # a run an earlier call did not finish (stopped, killed): kept aside, measured again
        stale = unused_name(folder / "incomplete", planned.run_id)
        stale.parent.mkdir(exist_ok=True)
        run_dir.rename(stale)
        print(f"{planned.run_id}: unfinished by an earlier call, moved to {display_path(stale)}")
    plan = plan_run(args, run_id=planned.run_id, results_dir=runs_dir, controls=controls, cases=cases)
    run_dir = make_run_dir(runs_dir, planned.run_id)
    run, failed = child.run_benchmarks(plan, run_dir)
    if run is None or failed:
        raise InputError("calibrate", f"run {planned.run_id} had failing benchmarks: {failed}")


def cmd_calibrate_compare(args: argparse.Namespace) -> int:
    """`calibrate --compare`: whole compares, A/A and with an injected head slowdown, into a new folder."""
    slowdowns = compare_cal.parse_slowdowns(args.slowdowns)
    if args.aa_runs < 1 or args.runs_per_size < 0:
        raise InputError("runs", "needs --aa-runs >= 1 and --runs-per-size >= 0", (args.aa_runs, args.runs_per_size))
    if args.keyword is None or args.case:
        raise InputError("keyword", "calibrate --compare selects its cases with -k EXPRESSION (and no --case)")
    if args.inject_slowdown or args.inject_gpu_work or args.inject_sync or args.inject_kernel:
        raise InputError("calibrate", "injects its own slowdown; other negative controls are refused")
    # calibrate's --threshold defaults to the stored-baseline gate's; a compare's own default is used unless given.
    threshold = DEFAULT_THRESHOLD if args.threshold == gate_mod.DEFAULT_LATENCY_THRESHOLD else args.threshold
    criteria = Criteria(threshold, parse_pattern_values(args.override, "override"), args.alpha,
                                    args.memory_threshold)
    folder = args.calibration_dir or args.results_dir / f"compare-calibration-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    check_output_dir("calibration_dir", folder)
    if folder.exists():
        raise InputError("calibration_dir", "exists; a compare calibration is written to a new folder", str(folder))
    CompareSettings("HEAD", REPO_ROOT, "tiny", run_controls(args), criteria, folder, "x",
                                processes=processes_for(args),  # checks --processes before anything runs
                                worker_start=worker_start_for(args))
    runs_dir = folder.parent / f".{folder.name}-compares"
    plan = plan_run(args, suffix="-compare")

    def run_compare(slowdown: float | None, index: int) -> CompareReport:
        controls = plan.controls if slowdown is None else dataclasses.replace(plan.controls, slowdowns={"*": slowdown})
        run_id = f"{index:03d}-{'aa' if slowdown is None else f'slow{slowdown:g}'}"
        settings = CompareSettings(
            base_ref=args.base, repo=REPO_ROOT, preset_name=plan.preset_name, controls=controls, criteria=criteria,
            results_dir=runs_dir, run_id=run_id, keyword=args.keyword, dit_layers=args.dit_layers,
            weights_dir=args.weights_dir, argv=f"calibrate --compare #{index}", processes=processes_for(args),
            worker_start=worker_start_for(args))
        record, logs = coordinator.measure_run(settings)  # a stop signal raises Interrupted
        return write_compare_run(record, logs, runs_dir / run_id)[0]

    cal = compare_cal.run_calibration(run_compare, aa_runs=args.aa_runs, slowdowns=slowdowns,
                                      runs_per_slowdown=args.runs_per_size, clock=time.monotonic,
                                      command="python -m bench " + " ".join(sys.argv[1:]), load=args.load)
    report = compare_cal.write(cal, folder)
    print(f"compare calibration: {display_path(report)} (compares in {display_path(runs_dir)})")
    return EXIT_PASS


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure the missing runs of each step into the calibration folder, then report on all of them."""
    if args.compare:
        return cmd_calibrate_compare(args)
    config = gate_config(args)
    started = time.monotonic()
    sizes = calibrate_mod.parse_sizes(args.sizes)
    for name in ("baseline_runs", "aa_runs", "runs_per_size", "runs_per_control"):
        if getattr(args, name) < 1:
            raise InputError(name, "must be >= 1", getattr(args, name))
    if args.time_budget_s is not None and not (math.isfinite(args.time_budget_s) and args.time_budget_s > 0):
        raise InputError("time_budget_s", "must be a finite number of seconds > 0", args.time_budget_s)
    if args.inject_slowdown or args.inject_gpu_work or args.inject_sync or args.inject_kernel \
            or any(getattr(args, s.revert) for s in STRATEGIES):
        raise InputError("calibrate", "injects its own GPU work; other negative controls are refused")
    folder = args.calibration_dir or args.results_dir / f"calibration-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    check_output_dir("calibration_dir", folder)
    cases = calibrate_mod.DEFAULT_CASES if args.case == [] and args.keyword is None else args.case
    steps = args.step or ["baseline", "aa", "gpu", "controls", "report"]
    runs_dir = folder / "runs"
    planned = calibrate_mod.schedule(
        steps, baseline_runs=args.baseline_runs, aa_runs=args.aa_runs, sizes=sizes,
        runs_per_size=args.runs_per_size, runs_per_control=args.runs_per_control)
    missing = [p for p in planned if not (runs_dir / p.run_id / RUN_RECORD).is_file()]  # else measured earlier
    for i, planned_run in enumerate(missing):
        if args.time_budget_s is not None and time.monotonic() - started > args.time_budget_s:
            left = missing[i:]
            print(f"time budget of {args.time_budget_s:g} s spent: {len(left)} run(s) not started "
                  f"({', '.join(p.run_id for p in left)}); name the same --calibration-dir again to measure them")
            break
        measure_calibration_run(args, planned_run, folder, cases)
    records = sorted((p.parent.name, load_run(p)) for p in runs_dir.glob(f"*/{RUN_RECORD}"))
    runs = calibrate_mod.group_runs(records)
    if "report" not in steps:
        print(f"calibration runs in {display_path(runs_dir)}: {len(runs.baseline)} baseline, {len(runs.aa)} A/A, "
              + ", ".join([*(f"{len(r)} at +{s:.0%}" for s, r in sorted(runs.injected.items())),
                           *(f"{len(r)} {c}" for c, r in sorted(runs.controls.items()))]))
        return EXIT_PASS
    cal = calibrate_mod.analyse(runs.baseline, runs.aa, runs.injected, config, runs.controls)
    report = calibrate_mod.write(cal, unused_name(folder, "report"))
    print(report.read_text())
    print(f"report: {display_path(report)}")
    return EXIT_PASS
