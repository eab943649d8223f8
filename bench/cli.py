"""`python -m bench`: run the benchmarks, gate them against a baseline, write the report, record baselines.

Exit status: 0 pass, 1 regression (or a failed benchmark / in-run check), 2 usage or data error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from bench import gate as gate_mod
from bench.environment import REPO_ROOT
from bench.harness import REVERT_ENV, ROUNDS_ENV, SLOWDOWN_ENV, RoundPolicy, parse_slowdowns
from bench.records import RunRecord, load_run, merge_runs, run_from_pytest_benchmark, save_run
from bench.report import append_github_summary, write_report
from cosmos3.errors import InputError

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2
BENCHMARKS_DIR = Path(__file__).resolve().parent / "benchmarks"
RUN_RECORD = "run.json"
PYTEST_JSON = "pytest-benchmark.json"
JUNIT_XML = "junit.xml"


def _fraction_items(values: list[str], field: str) -> dict[str, float]:
    out = {}
    for item in values:
        name, sep, value = item.rpartition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InputError(field, "must read NAME=FRACTION, e.g. 'e2e[*]=0.10'", item)
    return out


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
    g.add_argument("--alpha", type=float, default=gate_mod.DEFAULT_ALPHA, help="significance level (default %(default)s)")
    g.add_argument("--memory-threshold", type=float, default=gate_mod.DEFAULT_MEMORY_THRESHOLD,
                   help="allowed peak-memory growth, a fraction (default %(default)s)")
    g.add_argument("--exclude", action="append", default=[], metavar="NAME",
                   help="baseline benchmark this run need not contain; may use * (repeatable)")
    g.add_argument("--min-speedup", type=float, default=gate_mod.DEFAULT_MIN_SPEEDUP,
                   help="single_frame must beat expand by this factor (default %(default)s)")
    g.add_argument("--noise-k", type=float, default=gate_mod.DEFAULT_NOISE_K,
                   help="a slowdown must also exceed this many run-to-run standard deviations of a baseline "
                        "merged from >= 3 runs (default %(default)s)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("run")
    r.add_argument("--preset", choices=("auto", "tiny", "wan22"), default="auto",
                   help="auto: wan22 with CUDA, tiny on the CPU")
    r.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    r.add_argument("--run-id", help="name of results/<run-id>/ (default: UTC time and preset); never reused")
    r.add_argument("--weights-dir", type=Path, help="local diffusers folder with real weights (vae/, transformer/)")
    r.add_argument("--dit-layers", type=int, help="DiT stand-in depth (default: the preset's)")
    r.add_argument("-k", dest="keyword", help="pytest -k expression to run a subset")
    r.add_argument("--rounds", metavar="WARMUP,MIN,MAX,TARGET_MS", help="round policy (default 2,5,60,2000)")
    n = p.add_argument_group("negative controls (prove the gate can fail; never in a baseline)")
    n.add_argument("--inject-slowdown", action="append", default=[], metavar="PATTERN=FRACTION",
                   help="sleep FRACTION of each timed round's time in matching cases, e.g. 'latent_prep[single_frame-*]=0.1'")
    n.add_argument("--revert-single-frame", action="store_true",
                   help="run the old expand path in the cases labelled single_frame")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure, gate against the baseline, write results/<run-id>/")
    add_run_options(run)
    add_gate_options(run)
    again = sub.add_parser("gate", help="gate and report a finished run again (measures nothing)")
    again.add_argument("run_dir", type=Path)
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
    return p.parse_args(argv)


def gate_config(args: argparse.Namespace) -> gate_mod.GateConfig:
    return gate_mod.GateConfig(
        latency_threshold=args.threshold,
        latency_overrides=_fraction_items(args.override, "override"),
        alpha=args.alpha,
        memory_threshold=args.memory_threshold,
        exclude=frozenset(args.exclude),
        min_speedup=args.min_speedup,
        noise_k=args.noise_k,
    )


def resolve_preset(name: str) -> str:
    return name if name != "auto" else ("wan22" if torch.cuda.is_available() else "tiny")


def new_run_dir(args: argparse.Namespace, preset: str) -> Path:
    run_id = args.run_id or f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{preset}"
    run_dir = args.results_dir / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise InputError("run_id", "names a results folder that exists; runs are never overwritten", str(run_dir)) from None
    return run_dir


def failed_cases(junit: Path) -> list[str]:
    """Benchmarks that errored or failed, with pytest's message (a failure is not a skip)."""
    if not junit.is_file():
        return []
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                first = (node.get("message") or "").splitlines()[0] if node.get("message") else tag
                out.append(f"{case.get('name')}: benchmark {tag}: {first}")
    return out


def measure(args: argparse.Namespace, preset: str, run_dir: Path) -> tuple[RunRecord, list[str]]:
    """Run the pytest-benchmark suite in a child process; return the run record and failed cases."""
    env = dict(os.environ)
    slowdowns = _fraction_items(args.inject_slowdown, "inject_slowdown")
    env[SLOWDOWN_ENV] = ";".join(f"{k}={v}" for k, v in slowdowns.items())
    parse_slowdowns(env[SLOWDOWN_ENV])  # same rule the child applies, checked before any work
    env[REVERT_ENV] = "1" if args.revert_single_frame else ""
    if args.rounds:
        RoundPolicy.parse(args.rounds)  # checked here, before any work
        env[ROUNDS_ENV] = args.rounds
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "pytest", str(BENCHMARKS_DIR), "-q", "-p", "no:cacheprovider",
        f"--preset={preset}", f"--benchmark-json={run_dir / PYTEST_JSON}", f"--junitxml={run_dir / JUNIT_XML}",
        "--benchmark-sort=name", "--benchmark-columns=median,iqr,min,max,rounds",
    ]
    if args.weights_dir:
        cmd.append(f"--weights-dir={args.weights_dir}")
    if args.dit_layers:
        cmd.append(f"--dit-layers={args.dit_layers}")
    if args.keyword:
        cmd += ["-k", args.keyword]
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    code = subprocess.call(cmd, env=env, cwd=REPO_ROOT)
    wall_s = time.perf_counter() - started
    print(f"benchmark suite wall time: {wall_s:.1f} s", flush=True)
    if code not in (0, 1) or not (run_dir / PYTEST_JSON).is_file():
        raise InputError("benchmarks", f"pytest exited {code} without benchmark results (see its output above)")
    data = json.loads((run_dir / PYTEST_JSON).read_text())
    run = run_from_pytest_benchmark(data, source=str(run_dir / PYTEST_JSON))
    argv = "python -m bench " + " ".join(sys.argv[1:])
    run = dataclasses.replace(run, environment=dataclasses.replace(run.environment, argv=argv, suite_wall_s=wall_s))
    save_run(run, run_dir / RUN_RECORD)
    return run, failed_cases(run_dir / JUNIT_XML)


def find_baseline(args: argparse.Namespace, run: RunRecord) -> tuple[RunRecord | None, list[str]]:
    """The baseline to compare with, or None with a note saying why there is none."""
    env = run.environment
    if args.baseline is not None:
        baseline = load_run(args.baseline, what="baseline")
    else:
        path = args.baselines_dir / env.device_slug / f"{env.preset}.json"
        if not path.is_file():
            others = sorted(p.parent.name for p in args.baselines_dir.glob(f"*/{env.preset}.json"))
            why = (f"no baseline for {env.device_name} ({env.device_slug}), preset {env.preset}, at {path}"
                   + (f"; baselines exist for {', '.join(others)} (other devices are never compared silently: "
                      "pass --baseline PATH --allow-device-mismatch)" if others else ""))
            if args.require_baseline:
                raise InputError("baseline", why)
            return None, [why]
        baseline = load_run(path, what="baseline")
    gate_mod.check_compatible(env, baseline.environment, args.allow_device_mismatch)
    return baseline, []


def gate_and_report(args: argparse.Namespace, run: RunRecord, run_dir: Path, extra_failures: list[str]) -> int:
    config = gate_config(args)
    baseline, notes = find_baseline(args, run)
    report = gate_mod.evaluate(run, baseline, config)
    report = dataclasses.replace(
        report, failures=report.failures + tuple(extra_failures), notes=tuple(notes) + report.notes
    )
    summary = write_report(run, report, run_dir)
    append_github_summary(summary)
    print(summary.read_text())
    print(f"report: {summary}")
    print("PASS" if report.passed else f"FAIL: {len(report.failures)} failure(s), see above")
    return report.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    gate_config(args)  # bad gate options fail before minutes of measuring
    preset = resolve_preset(args.preset)
    run_dir = new_run_dir(args, preset)
    run, failed = measure(args, preset, run_dir)
    return gate_and_report(args, run, run_dir, failed)


def cmd_gate(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir / RUN_RECORD, what="run record")
    return gate_and_report(args, run, args.run_dir, [])


def baseline_runs(args: argparse.Namespace) -> list[tuple[RunRecord, list[str]]]:
    """The runs a baseline is made of: finished ones (--from-run) or --repeats fresh ones."""
    if args.from_run:
        return [(load_run(path / RUN_RECORD, what="run record"), []) for path in args.from_run]
    if args.repeats < 1:
        raise InputError("repeats", "must be >= 1", args.repeats)
    preset = resolve_preset(args.preset)
    base_id = args.run_id or f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{preset}-baseline"
    runs = []
    for i in range(1, args.repeats + 1):
        run_args = argparse.Namespace(**{**vars(args), "run_id": base_id if args.repeats == 1 else f"{base_id}-{i}"})
        runs.append(measure(run_args, preset, new_run_dir(run_args, preset)))
    return runs


def cmd_baseline(args: argparse.Namespace) -> int:
    runs = baseline_runs(args)
    problems = []
    for run, failed in runs:
        env = run.environment
        if env.negative_controls:
            raise InputError("baseline", "cannot be recorded with a negative control switched on",
                             list(env.negative_controls))
        problems += list(failed) + list(gate_mod.evaluate(run, None, gate_mod.GateConfig()).failures)
    if problems:
        print("refusing to record a baseline from a run that fails its own checks:\n- " + "\n- ".join(problems))
        return EXIT_REGRESSION
    run = runs[0][0] if len(runs) == 1 else merge_runs([r for r, _ in runs])
    env = run.environment
    path = args.baselines_dir / env.device_slug / f"{env.preset}.json"
    save_run(run, path, overwrite=args.force)
    merged = f", merged from {len(runs)} runs" if len(runs) > 1 else ""
    print(f"baseline written: {path} ({len(run.cases)} benchmarks{merged}, {env.device_name}, commit {env.commit})")
    return EXIT_PASS


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return {"run": cmd_run, "gate": cmd_gate, "baseline": cmd_baseline}[args.command](args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
