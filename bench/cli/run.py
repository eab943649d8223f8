"""`bench run` and `bench gate`: find the baseline, gate the run against it, write the report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.cli import EXIT_REGRESSION, child
from bench.cli.child import RUN_RECORD
from bench.cli.options import gate_config
from bench.cli.plan import make_run_dir, plan_run, unused_name
from bench.core.environment import display_path
from bench.core.interrupt import INTERRUPTED_RECORD
from bench.core.records import (
    RunRecord,
    load_run,
)
from bench.gate import rules as gate_mod
from bench.gate.report import append_github_summary, write_report
from cosmos3.errors import InputError
from cosmos3.paths import check_input_dir, check_inside, check_name, check_output_dir

REPORT_DIR = "report"  # the run's own report, beside its evidence


def baseline_path(baselines_dir: Path, device_slug: str, label: str, *, source: str = "run") -> Path:
    """baselines/<device_slug>/<label>.json: both names checked by the one name rule (a record's fields
    are checked when it is read; this is the last word before a path is built), the path inside the folder."""
    check_name(f"{source}.device_slug", device_slug)
    check_name(f"{source}.preset", label)
    return check_inside("baselines_dir", baselines_dir, baselines_dir / device_slug / f"{label}.json")


def find_baseline(args: argparse.Namespace, device_name: str, device_slug: str, label: str
                  ) -> tuple[RunRecord | None, list[str]]:
    """The baseline to compare with, or None with a note saying why there is none."""
    if args.baseline is not None:
        return load_run(args.baseline, what="baseline"), []
    check_input_dir("baselines_dir", args.baselines_dir)
    path = baseline_path(args.baselines_dir, device_slug, label)
    if not path.is_file():
        others = sorted(p.parent.name for p in args.baselines_dir.glob(f"*/{label}.json"))
        why = (f"no baseline for {device_name} ({device_slug}), preset {label}, at {display_path(path)}"
               + (f"; baselines exist for {', '.join(others)} (other devices are never compared silently: "
                  "pass --baseline PATH --allow-device-mismatch)" if others else ""))
        if args.require_baseline:
            raise InputError("baseline", why)
        return None, [why]
    return load_run(path, what="baseline"), []


def gate_and_report(args: argparse.Namespace, run: RunRecord, baseline: RunRecord | None, notes: list[str],
                    report_dir: Path, failed: list[str]) -> int:
    config = gate_config(args)
    if baseline is not None:
        gate_mod.check_compatible(run.environment, baseline.environment, args.allow_device_mismatch)
    report = gate_mod.evaluate(run, baseline, config, failed_benchmarks=failed, notes=notes)
    summary = write_report(run, report, report_dir)
    append_github_summary(summary)
    print(summary.read_text())
    print(f"report: {display_path(summary)}")
    print("PASS" if report.passed else f"FAIL: {len(report.failures)} failure(s), see above")
    return report.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    gate_config(args)  # bad gate options fail before minutes of measuring
    plan = plan_run(args)
    baseline, notes = find_baseline(args, plan.device_name, plan.device_slug, plan.preset)
    if baseline is not None:
        gate_mod.check_compatible(plan, baseline.environment, args.allow_device_mismatch)
    run_dir = make_run_dir(args.results_dir, plan.run_id)
    run, failed = child.run_benchmarks(plan, run_dir)
    if run is None:
        print("FAIL: no benchmark finished:\n- " + "\n- ".join(failed))
        return EXIT_REGRESSION
    return gate_and_report(args, run, baseline, notes, run_dir / REPORT_DIR, failed)


def cmd_gate(args: argparse.Namespace) -> int:
    gate_config(args)
    if (args.run_dir / INTERRUPTED_RECORD).is_file():
        raise InputError("run_dir", "holds a run that was interrupted; there is nothing to gate",
                         display_path(args.run_dir))
    run = load_run(args.run_dir / RUN_RECORD, what="run record")
    report_dir = args.report_dir or unused_name(args.run_dir, "gate")
    if os.path.lexists(report_dir):  # lexists: a name too long is checked next, not a traceback
        raise InputError("report_dir", "exists; a report is never overwritten", display_path(report_dir))
    check_output_dir("report_dir", report_dir)
    env = run.environment
    baseline, notes = find_baseline(args, env.device_name, env.device_slug, env.preset)
    return gate_and_report(args, run, baseline, notes, report_dir, [])
