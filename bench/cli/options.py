"""`python -m bench`: run the benchmarks, gate them against a baseline, write the report, record baselines.

Exit status: 0 pass, 1 regression (or a failed benchmark / in-run check), 2 usage or data error,
128 + N when stopped by signal N (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.calibrate import compare as compare_cal
from bench.calibrate import gate as calibrate_mod
from bench.compare.policy import (
    CASE_BUDGET_S,
    DEFAULT_PROCESSES_BY_DEVICE,
    DEFAULT_THRESHOLD,
    MAX_TRIALS,
    MIN_TRIALS,
    WORKER_STARTS,
)
from bench.core.cases import GRID_NAMES
from bench.core.environment import REPO_ROOT
from bench.core.records import (
    parse_pattern_values,
)
from bench.core.strategies import STRATEGIES
from bench.gate import rules as gate_mod
from bench.measure.controls import RoundPolicy, RunControls
from cosmos3.presets import PRESETS


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
