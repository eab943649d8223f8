"""`bench baseline`: record a baseline from fresh runs or from run folders, merged."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.cli import EXIT_PASS, EXIT_REGRESSION, child
from bench.cli.child import RUN_RECORD
from bench.cli.plan import check_new_run_dir, make_run_dir, plan_run
from bench.cli.run import baseline_path
from bench.core.environment import display_path
from bench.core.records import (
    RunRecord,
    load_run,
    merge_runs,
    save_run,
)
from bench.gate import rules as gate_mod
from cosmos3.errors import InputError
from cosmos3.paths import check_output_dir


def check_distinct_runs(folders: list[Path]) -> None:
    """One run folder named twice (as given, or after symlinks resolve) is the same run twice; a copy of
    a run in another folder is caught by its samples (bench.core.records.merge_runs)."""
    seen: dict[str, int] = {}
    for i, folder in enumerate(folders):
        first = seen.setdefault(os.path.realpath(folder), i)
        if first != i:
            raise InputError("from_run", f"names the same run folder twice (--from-run #{first + 1} and #{i + 1}); "
                                         "a merge needs distinct runs", str(folder))


def cmd_baseline(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise InputError("repeats", "must be >= 1", args.repeats)
    check_output_dir("baselines_dir", args.baselines_dir)  # a loop or /proc, before a path is built in it
    if args.from_run:
        check_distinct_runs(args.from_run)
        runs = [(load_run(path / RUN_RECORD, what="run record"), []) for path in args.from_run]
        first = runs[0][0].environment
        path = baseline_path(args.baselines_dir, first.device_slug, first.preset)
    else:
        plan = plan_run(args, suffix="-baseline")
        if plan.controls.active:
            raise InputError("baseline", "cannot be recorded with a negative control switched on",
                             list(plan.controls.active))
        path = baseline_path(args.baselines_dir, plan.device_slug, plan.preset)
    # Both refusals come before minutes of measuring.
    if os.path.lexists(path) and not args.force:
        raise InputError("baseline", "file exists; pass --force to replace it", display_path(path))
    check_output_dir("baselines_dir", path.parent)
    if not args.from_run:
        run_ids = [plan.run_id] if args.repeats == 1 else [f"{plan.run_id}-{i}" for i in range(1, args.repeats + 1)]
        for run_id in run_ids:  # every folder of every repeat, before the first is measured
            check_new_run_dir(args.results_dir, run_id)
        runs = []
        for run_id in run_ids:
            run_dir = make_run_dir(args.results_dir, run_id)
            run, failed = child.run_benchmarks(plan, run_dir)
            if run is None:
                print("refusing to record a baseline: no benchmark finished:\n- " + "\n- ".join(failed))
                return EXIT_REGRESSION
            runs.append((run, failed))
    problems = []
    for run, failed in runs:
        env = run.environment
        if env.negative_controls:
            raise InputError("baseline", "cannot be recorded with a negative control switched on",
                             list(env.negative_controls))
        problems += list(gate_mod.evaluate(run, None, gate_mod.GateConfig(), failed_benchmarks=failed).failures)
    if problems:
        print("refusing to record a baseline from a run that fails its own checks:\n- " + "\n- ".join(problems))
        return EXIT_REGRESSION
    run = runs[0][0] if len(runs) == 1 else merge_runs([r for r, _ in runs])
    env = run.environment
    save_run(run, path, overwrite=args.force)
    merged = f", merged from {len(runs)} runs" if len(runs) > 1 else ""
    print(f"baseline written: {display_path(path)} ({len(run.cases)} benchmarks{merged}, {env.device_name}, "
          f"commit {env.commit})")
    if len(runs) > 1:
        print(counter_agreement(run, len(runs)))
    return EXIT_PASS


def counter_agreement(merged: RunRecord, runs: int) -> str:
    """Whether each profiled benchmark's work counters were the same in every run merged (and every
    profiled round): the determinism the counter rules rest on. The gate does not judge a varying one."""
    profiled = [c for c in merged.cases if c.counters is not None]
    varying = [f"{c.name}: {', '.join(c.counters.varying_counters)}" for c in profiled if c.counters.varying_counters]
    line = (f"work counters identical in all {runs} runs and every profiled round: "
            f"{len(profiled) - len(varying)} of {len(profiled)} profiled benchmarks")
    if varying:
        line += "; these varied, and the gate will not judge them:\n- " + "\n- ".join(varying)
    return line
