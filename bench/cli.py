"""`python -m bench`: run the benchmarks, gate them against a baseline, write the report, record baselines.

Exit status: 0 pass, 1 regression (or a failed benchmark / in-run check), 2 usage or data error,
128 + N when stopped by signal N (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.calibrate import compare as compare_cal
from bench.calibrate import gate as calibrate_mod
from bench.compare import coordinator
from bench.compare.coordinator import CompareSettings
from bench.compare.judge import CompareReport
from bench.compare.policy import (
    CASE_BUDGET_S,
    DEFAULT_PROCESSES_BY_DEVICE,
    DEFAULT_THRESHOLD,
    MAX_TRIALS,
    MIN_TRIALS,
    WORKER_STARTS,
    default_processes,
    default_start,
)
from bench.compare.record import Criteria
from bench.compare.report import write_compare_run
from bench.core import cases as cases_mod
from bench.core.cases import GRID_NAMES
from bench.core.environment import REPO_ROOT, device_identity, display_path, run_label
from bench.core.interrupt import INTERRUPTED_RECORD, STOP_SIGNALS, Interrupted, write_interrupted
from bench.core.records import (
    RunRecord,
    load_run,
    merge_runs,
    parse_pattern_values,
    run_from_pytest_benchmark,
    save_run,
)
from bench.core.strategies import STRATEGIES
from bench.gate import rules as gate_mod
from bench.gate.report import append_github_summary, write_report
from bench.measure.controls import CONTROLS_ENV, RoundPolicy, RunControls
from cosmos3 import strict_json
from cosmos3.components import check_weights_dir
from cosmos3.errors import InputError
from cosmos3.paths import NAME_RULE, check_input_dir, check_inside, check_name, check_output_dir, reason
from cosmos3.presets import PRESETS, resolve_preset_name

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2
BENCHMARKS_DIR = Path(__file__).resolve().parent / "benchmarks"
RUN_RECORD = "run.json"
PYTEST_JSON = "pytest-benchmark.json"
JUNIT_XML = "junit.xml"
REPORT_DIR = "report"  # the run's own report, beside its evidence
# A run id names one folder: letters, digits and . _ - only, so it can never climb out of results/.
# The same rule as every record field that becomes part of a path (cosmos3.paths.check_name).
RUN_ID_RULE = NAME_RULE
# After a stop signal the benchmark child gets this long to exit before it is killed.
CHILD_GRACE_S = 10.0


def add_gate_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("gate")
    g.add_argument("--baseline", type=Path, help="compare with this file (default: baselines/<device>/<preset>.json)")
    g.add_argument("--baselines-dir", type=Path, default=REPO_ROOT / "baselines")
    g.add_argument("--require-baseline", action="store_true", help="exit 2 when no baseline exists for this device")
    g.add_argument("--allow-device-mismatch", action="store_true", help="compare with another GPU model's baseline")
    g.add_argument("--threshold", type=float, default=gate_mod.DEFAULT_LATENCY_THRESHOLD,
                   help="allowed median slowdown, a fraction (default %(default)s)")
    g.add_argument("--override", action="append", default=[], metavar="NAME=FRACTION",
                   help="per-benchmark threshold; NAME may use * (repeatable)")
    g.add_argument("--device-threshold", type=float, default=gate_mod.DEFAULT_DEVICE_THRESHOLD,
                   help="allowed median device-time growth, a fraction (default %(default)s)")
    g.add_argument("--alpha", type=float, default=gate_mod.DEFAULT_ALPHA, help="significance level (default %(default)s)")
    g.add_argument("--memory-threshold", type=float, default=gate_mod.DEFAULT_MEMORY_THRESHOLD,
                   help="allowed peak-memory growth, a fraction (default %(default)s)")
    g.add_argument("--exclude", action="append", default=[], metavar="NAME",
                   help="baseline benchmark this run need not contain; may use * (repeatable)")
    for strategy in STRATEGIES:
        g.add_argument(f"--{strategy.speedup.replace('_', '-')}", dest=strategy.speedup, type=float,
                       default=strategy.default_min_speedup, help=strategy.speedup_help)
    g.add_argument("--noise-k", type=float, default=gate_mod.DEFAULT_NOISE_K,
                   help="a slowdown must also exceed this many run-to-run standard deviations of a baseline "
                        "merged from >= 3 runs (default %(default)s)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("run")
    r.add_argument("--preset", choices=("auto", *sorted(PRESETS)), default="auto",
                   help="auto: wan22 with CUDA, tiny on the CPU")
    r.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    r.add_argument("--run-id", help="name of results/<run-id>/ (default: UTC time and preset); never reused")
    r.add_argument("--weights-dir", type=Path, help="local diffusers folder with real weights (vae/, transformer/)")
    r.add_argument("--dit-layers", type=int, help="Cosmos3 transformer depth (default: the preset's; 36 = all of Cosmos3-Nano)")
    r.add_argument("-k", dest="keyword", help="pytest -k expression to run a subset")
    r.add_argument("--grid", choices=GRID_NAMES, default="default",
                   help="extended: add the upstream table's e2e case (832x480 on wan22) and e2e first_frame_2d")
    r.add_argument("--case", action="append", default=[], metavar="PATTERN",
                   help="run only cases whose name matches, e.g. 'latent_prep[single_frame-*]' (repeatable)")
    r.add_argument("--rounds", metavar="WARMUP,MIN,MAX,TARGET_MS", help="round policy (default 2,5,60,2000)")
    n = p.add_argument_group("negative controls (prove the gate can fail; never in a baseline)")
    n.add_argument("--inject-slowdown", action="append", default=[], metavar="PATTERN=FRACTION",
                   help="sleep FRACTION of each timed round's time in matching cases, e.g. 'latent_prep[single_frame-*]=0.1'")
    n.add_argument("--inject-gpu-work", action="append", default=[], metavar="PATTERN=FRACTION",
                   help="a busy GPU kernel inside the measured function, FRACTION of the case's device time")
    n.add_argument("--inject-sync", action="append", default=[], metavar="PATTERN",
                   help="one extra host-device synchronisation per round in matching cases")
    n.add_argument("--inject-kernel", action="append", default=[], metavar="PATTERN",
                   help="one extra small kernel per round in matching cases")
    for strategy in STRATEGIES:
        n.add_argument(f"--{strategy.revert.replace('_', '-')}", dest=strategy.revert, action="store_true",
                       help=strategy.revert_help)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure, gate against the baseline, write results/<run-id>/")
    add_run_options(run)
    add_gate_options(run)
    again = sub.add_parser("gate", help="gate and report a finished run again (measures nothing, edits nothing)")
    again.add_argument("run_dir", type=Path)
    again.add_argument("--report-dir", type=Path,
                       help="a new folder for the report (default: RUN_DIR/gate-<UTC time>/); never overwritten")
    add_gate_options(again)
    base = sub.add_parser("baseline", help="record baselines/<device>/<preset>.json from a run")
    base.add_argument("--from-run", type=Path, action="append", default=[], metavar="RUN_DIR",
                      help="use this finished run instead of measuring; repeat to merge several runs")
    base.add_argument("--repeats", type=int, default=1,
                      help="measure this many runs, each in its own process, and merge them (default 1; "
                           ">= 3 lets the gate allow for run-to-run noise)")
    base.add_argument("--force", action="store_true", help="replace an existing baseline")
    base.add_argument("--baselines-dir", type=Path, default=REPO_ROOT / "baselines")
    add_run_options(base)
    cal = sub.add_parser("calibrate", help="measure the gate's false alarms (A/A) and its power on injected GPU work")
    cal.add_argument("--calibration-dir", type=Path,
                     help="folder of the calibration's runs (default results/calibration-<UTC>); name an existing "
                          "one to add runs to it: steps split over several calls add up")
    cal.add_argument("--step", action="append", choices=("baseline", "aa", "gpu", "controls", "report"), default=[],
                     help="measure only these steps (default: all, then the report); repeatable")
    cal.add_argument("--baseline-runs", type=int, default=3, help="runs merged into the baseline (default %(default)s)")
    cal.add_argument("--aa-runs", type=int, default=10, help="unchanged runs gated against it (default %(default)s)")
    cal.add_argument("--runs-per-size", type=int, default=10, help="runs per injected size (default %(default)s)")
    cal.add_argument("--sizes", default=",".join(f"{s:g}" for s in calibrate_mod.DEFAULT_SIZES),
                     help="injected GPU work, fractions of device time (default %(default)s)")
    cal.add_argument("--runs-per-control", type=int, default=3,
                     help="runs with one extra sync, and with one extra kernel, per round (default %(default)s)")
    cal.add_argument("--time-budget-s", type=float, default=None, metavar="SECONDS",
                     help="start no run after SECONDS of this call; a later call naming the same folder measures "
                          "the rest (default: no limit)")
    cc = cal.add_argument_group("calibrating compare (--compare)")
    cc.add_argument("--compare", action="store_true",
                    help="calibrate `bench compare` instead: --aa-runs A/A compares and --runs-per-size compares per "
                         "--slowdowns (a host slowdown of the head), on the cases of -k; the false alarms and "
                         "detection rate per case go to compare_calibration.{json,md} and a plot")
    cc.add_argument("--base", default="HEAD", metavar="REF", help="the base of every compare (default %(default)s)")
    cc.add_argument("--processes", type=int, default=None, metavar="K",
                    help="worker processes per side in each compare (default: as compare's)")
    cc.add_argument("--worker-start", choices=WORKER_STARTS, default=None,
                    help="how each compare's workers start (default: as compare's)")
    cc.add_argument("--slowdowns", default=",".join(f"{s:g}" for s in compare_cal.DEFAULT_SLOWDOWNS),
                    help="head slowdowns injected, fractions of each round (default %(default)s)")
    cc.add_argument("--load", default="", help="a description of the machine's load, kept in the report")
    add_run_options(cal)
    add_gate_options(cal)
    ab = sub.add_parser("compare", help="measure the working tree against a git ref, interleaved in one job; "
                                        "fail on a significant paired slowdown",
                        description="Base and head run the head's benchmarks, each with its own cosmos3, one round "
                                    "each per trial in a seeded random order; negative controls apply to the head "
                                    "only. Exit 0 pass, 1 regression, 2 bad input or a dead worker.")
    ab.add_argument("--base", required=True, metavar="REF",
                    help="any git ref; its cosmos3 runs from a temporary worktree, with the head's benchmarks")
    add_run_options(ab)
    for action in ab._actions:  # the same four numbers, read as trials
        if action.dest == "rounds":
            action.metavar = "WARMUP,MIN_TRIALS,MAX_TRIALS,BUDGET_MS"
            action.help = ("warm-up rounds per side, trials per case, and the per-case budget of both sides' round "
                           f"time (default: each kind's warm-up, {MIN_TRIALS}, {MAX_TRIALS}, "
                           f"{CASE_BUDGET_S['cuda'] * 1e3:g} on a GPU, "
                           f"{CASE_BUDGET_S['cpu'] * 1e3:g} on the CPU)")
    ab.add_argument("--processes", type=int, default=None, metavar="K",
                    help="worker processes per side, run as K (head, base) pairs that share the trials; a regression "
                         "must also be significant across the pairs (default: "
                         f"{DEFAULT_PROCESSES_BY_DEVICE['cuda']} on a GPU, "
                         f"{DEFAULT_PROCESSES_BY_DEVICE['cpu']} on the CPU; 1: process bias unmeasured)")
    ab.add_argument("--worker-start", choices=WORKER_STARTS, default=None,
                    help="exec: each worker a fresh interpreter; fork: forked from one server that has imported "
                         "torch and diffusers, seconds faster per worker, never with CUDA (default: exec on a GPU, "
                         "fork on the CPU)")
    v = ab.add_argument_group("verdict")
    v.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="allowed paired slowdown, a fraction (default %(default)s)")
    v.add_argument("--override", action="append", default=[], metavar="NAME=FRACTION",
                   help="per-benchmark threshold; NAME may use * (repeatable)")
    v.add_argument("--alpha", type=float, default=gate_mod.DEFAULT_ALPHA,
                   help="false-alarm rate of the whole compare, Holm-corrected (default %(default)s)")
    v.add_argument("--memory-threshold", type=float, default=gate_mod.DEFAULT_MEMORY_THRESHOLD,
                   help="allowed working-memory growth, a fraction (default %(default)s)")
    return p.parse_args(argv)


# ---- checks made before anything is created or measured ------------------------------------------


def gate_config(args: argparse.Namespace) -> gate_mod.GateConfig:
    return gate_mod.GateConfig(
        latency_threshold=args.threshold,
        device_threshold=args.device_threshold,
        latency_overrides=parse_pattern_values(args.override, "override"),
        alpha=args.alpha,
        memory_threshold=args.memory_threshold,
        exclude=frozenset(args.exclude),
        min_speedups={s.name: getattr(args, s.speedup) for s in STRATEGIES},
        noise_k=args.noise_k,
    )


def run_controls(args: argparse.Namespace) -> RunControls:
    return RunControls(
        rounds=RoundPolicy.parse(args.rounds) if args.rounds is not None else None,
        slowdowns=parse_pattern_values(args.inject_slowdown, "inject_slowdown"),
        gpu_work=parse_pattern_values(args.inject_gpu_work, "inject_gpu_work"),
        syncs=tuple(args.inject_sync),
        kernels=tuple(args.inject_kernel),
        reverted=tuple(s.name for s in STRATEGIES if getattr(args, s.revert)),
    )


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run's every input, checked: nothing has been created or measured yet."""

    preset_name: str  # the preset the benchmarks build: tiny | wan22
    preset: str  # the configuration's label, as the run's environment will record it (wan22, wan22-dit30)
    device_name: str
    device_slug: str
    controls: RunControls
    run_id: str
    # What the benchmark child is asked to measure, as the pytest options say it.
    keyword: str | None = None
    cases: tuple[str, ...] = ()
    grid: str = "default"
    weights_dir: Path | None = None
    dit_layers: int | None = None


def plan_run(args: argparse.Namespace, *, suffix: str = "", run_id: str | None = None,
             results_dir: Path | None = None, controls: RunControls | None = None,
             cases: Sequence[str] | None = None) -> RunPlan:
    """The run the options ask for; a caller that runs several (calibrate) names its own run id, results
    folder, controls or cases instead of the options'."""
    preset = resolve_preset_name(args.preset)
    if args.dit_layers is not None and args.dit_layers < 1:
        raise InputError("dit_layers", "must be >= 1", args.dit_layers)
    if args.weights_dir is not None:
        check_weights_dir(args.weights_dir)
    controls = run_controls(args) if controls is None else controls
    cases = tuple(args.case if cases is None else cases)
    controls.check_applies(cases_mod.chosen(preset, args.grid, args.keyword, list(cases)))
    name, slug = device_identity(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    run_id = run_id if run_id is not None else args.run_id
    run_id = run_id if run_id is not None else f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{preset}{suffix}"
    results_dir = args.results_dir if results_dir is None else results_dir
    check_name("run_id", run_id)
    check_output_dir("results_dir", results_dir)
    check_new_run_dir(results_dir, run_id)
    return RunPlan(preset, run_label(preset, args.dit_layers), name, slug, controls, run_id, args.keyword, cases,
                   args.grid, args.weights_dir, args.dit_layers)


def check_new_run_dir(results_dir: Path, run_id: str) -> Path:
    """results_dir/run_id: a name by the one rule, not yet there (a symlink to nothing counts as there)."""
    check_name("run_id", run_id)
    run_dir = results_dir / run_id
    if os.path.lexists(run_dir):
        raise InputError("run_id", "names a results folder that exists; runs are never overwritten",
                         display_path(run_dir))
    return run_dir


def make_run_dir(results_dir: Path, run_id: str) -> Path:
    """Create results_dir/run_id, never reusing one; every OSError an InputError naming the option."""
    run_dir = check_new_run_dir(results_dir, run_id)
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise InputError("run_id", "names a results folder that exists; runs are never overwritten",
                         display_path(run_dir)) from None
    except OSError as exc:
        raise InputError("results_dir", f"must be a folder that can be created ({reason(exc)})",
                         display_path(run_dir)) from None
    return run_dir


# ---- measuring: the pytest-benchmark suite in a child process -------------------------------------


def _run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run the benchmark child; a SIGTERM, SIGINT or SIGHUP to this process stops it too.

    A SIGKILL runs no handler: for that the child asks the kernel for a signal at its parent's
    death (RunControls.parent_pid, bench.measure.harness.die_with_parent).
    """
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT)
    stopped: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopped.append(signum)
        proc.send_signal(signal.SIGTERM)  # the child may also have had the terminal's SIGINT

    handlers = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        code = proc.wait()
        if stopped:
            raise Interrupted(stopped[0])
        return code
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=CHILD_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for s, handler in handlers.items():
            signal.signal(s, handler)


def failed_cases(junit: Path) -> list[str]:
    """Benchmarks that errored or failed, with pytest's message (a failure is not a skip)."""
    if not junit.is_file():
        return []
    try:
        root = ET.parse(junit).getroot()
    except ET.ParseError as exc:
        raise InputError("junit_xml", f"must be well-formed XML ({exc})", display_path(junit)) from None
    out = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                first = (node.get("message") or "").splitlines()[0] if node.get("message") else tag
                out.append(f"{case.get('name')}: benchmark {tag}: {first}")
    return out


def read_benchmark_json(path: Path) -> dict:
    try:
        return strict_json.loads(path.read_text(), f"pytest_benchmark_json {display_path(path)}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError("pytest_benchmark_json", f"must be readable JSON ({exc})", display_path(path)) from None


def run_benchmarks(plan: RunPlan, run_dir: Path) -> tuple[RunRecord | None, list[str]]:
    """Run the suite in a child process; return its run record (None if no case finished) and failed cases."""
    env = dict(os.environ)
    env[CONTROLS_ENV] = dataclasses.replace(plan.controls, parent_pid=os.getpid()).to_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "pytest", display_path(BENCHMARKS_DIR), "-q", "-p", "no:cacheprovider",
        f"--preset={plan.preset_name}", f"--benchmark-json={display_path(run_dir / PYTEST_JSON)}",
        f"--junitxml={display_path(run_dir / JUNIT_XML)}",
        "--benchmark-sort=name", "--benchmark-columns=median,iqr,min,max,rounds",
    ]
    if plan.weights_dir is not None:
        cmd.append(f"--weights-dir={plan.weights_dir}")
    if plan.dit_layers is not None:
        cmd.append(f"--dit-layers={plan.dit_layers}")
    if plan.keyword is not None:
        cmd += ["-k", plan.keyword]
    cmd += [f"--case={pattern}" for pattern in plan.cases]
    if plan.grid != "default":
        cmd.append(f"--grid={plan.grid}")
    print("$ " + shlex.join(["python", *cmd[1:]]), flush=True)
    started = time.perf_counter()
    try:
        code = _run_child(cmd, env)
    except Interrupted as stop:
        # Nothing half-written stays: the child's partial outputs go, one record says what happened.
        for name in (PYTEST_JSON, JUNIT_XML):
            (run_dir / name).unlink(missing_ok=True)
        write_interrupted(run_dir, stop.signum, "python -m bench " + " ".join(sys.argv[1:]))
        raise
    wall_s = time.perf_counter() - started
    print(f"benchmark suite wall time: {wall_s:.1f} s", flush=True)
    failed = failed_cases(run_dir / JUNIT_XML)
    if code not in (0, 1) or not (run_dir / PYTEST_JSON).is_file():
        raise InputError("benchmarks", f"pytest exited {code} without benchmark results (see its output above)")
    data = read_benchmark_json(run_dir / PYTEST_JSON)
    if failed and not data.get("benchmarks"):
        return None, failed  # every selected case failed: a verdict (exit 1), not a usage error
    run = run_from_pytest_benchmark(data, source=display_path(run_dir / PYTEST_JSON))
    argv = "python -m bench " + " ".join(sys.argv[1:])
    run = dataclasses.replace(run, environment=dataclasses.replace(run.environment, argv=argv, suite_wall_s=wall_s))
    save_run(run, run_dir / RUN_RECORD)
    return run, failed


# ---- gating and reporting ------------------------------------------------------------------------


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
    run, failed = run_benchmarks(plan, run_dir)
    if run is None:
        print("FAIL: no benchmark finished:\n- " + "\n- ".join(failed))
        return EXIT_REGRESSION
    return gate_and_report(args, run, baseline, notes, run_dir / REPORT_DIR, failed)


def unused_name(parent: Path, prefix: str) -> Path:
    """parent/<prefix>-<UTC time>, with -2, -3, ... where that exists (two reports in one second)."""
    stem = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    path, n = parent / stem, 1
    while path.exists():
        n += 1
        path = parent / f"{stem}-{n}"
    return path


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
            run, failed = run_benchmarks(plan, run_dir)
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
    run, failed = run_benchmarks(plan, run_dir)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        commands = {"run": cmd_run, "gate": cmd_gate, "baseline": cmd_baseline, "calibrate": cmd_calibrate,
                    "compare": cmd_compare}
        return commands[args.command](args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as stop:
        print(f"error: {stop}; the benchmark child was stopped and the run left only {INTERRUPTED_RECORD}",
              file=sys.stderr)
        return 128 + stop.signum
