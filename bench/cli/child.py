"""Measuring: the pytest-benchmark suite in a child process, its stop signals, its junit and JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.cli.plan import RunPlan
from bench.core.environment import REPO_ROOT, display_path
from bench.core.interrupt import STOP_SIGNALS, Interrupted, write_interrupted
from bench.core.records import (
    RunRecord,
    run_from_pytest_benchmark,
    save_run,
)
from bench.measure.controls import CONTROLS_ENV
from cosmos3 import strict_json
from cosmos3.errors import InputError

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


RUN_RECORD = "run.json"


PYTEST_JSON = "pytest-benchmark.json"


JUNIT_XML = "junit.xml"


# After a stop signal the benchmark child gets this long to exit before it is killed.
CHILD_GRACE_S = 10.0


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
