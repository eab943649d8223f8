"""`bench compare --base REF`: the command line around bench.compare."""

from __future__ import annotations

import argparse
import sys

import torch

from bench.cli.plan import plan_run
from bench.compare import coordinator
from bench.compare.coordinator import CompareSettings
from bench.compare.policy import (
    default_processes,
    default_start,
)
from bench.compare.record import Criteria
from bench.compare.report import write_compare_run
from bench.core.environment import REPO_ROOT, display_path
from bench.core.records import (
    parse_pattern_values,
)
from bench.gate.report import append_github_summary
from cosmos3.errors import InputError


def device_kind() -> str:
    """The device compare's workers will use: CUDA where there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def processes_for(args: argparse.Namespace) -> int:
    """--processes, or compare's default for this machine's device."""
    if args.processes is not None:
        return args.processes
    return default_processes(device_kind())


def worker_start_for(args: argparse.Namespace) -> str:
    """--worker-start, or compare's default for this machine's device (never fork where CUDA is)."""
    if args.worker_start is not None:
        if args.worker_start == "fork" and device_kind() == "cuda":
            raise InputError("worker_start", "cannot be fork where CUDA is available: a forked process cannot "
                                             "use CUDA once its server may have initialised it", args.worker_start)
        return args.worker_start
    return default_start(device_kind())


def cmd_compare(args: argparse.Namespace) -> int:
    criteria = Criteria(args.threshold, parse_pattern_values(args.override, "override"), args.alpha,
                                    args.memory_threshold)
    if args.case or args.grid != "default":
        raise InputError("case", "compare selects its cases with -k EXPRESSION only (no --case, no --grid)")
    plan = plan_run(args, suffix="-compare")
    settings = CompareSettings(
        base_ref=args.base, repo=REPO_ROOT, preset_name=plan.preset_name, controls=plan.controls, criteria=criteria,
        results_dir=args.results_dir, run_id=plan.run_id, keyword=args.keyword, dit_layers=args.dit_layers,
        weights_dir=args.weights_dir, argv="python -m bench " + " ".join(sys.argv[1:]), processes=processes_for(args),
        worker_start=worker_start_for(args),
    )
    record, logs = coordinator.measure_run(settings)  # a stop signal raises Interrupted
    report, summary = write_compare_run(record, logs, args.results_dir / plan.run_id)
    append_github_summary(summary)
    print(summary.read_text())
    print(f"report: {display_path(summary)}")
    print("PASS" if report.passed else f"FAIL: {len(report.failures)} failure(s), see above")
    return report.exit_code
