"""nox sessions: tests, bench, baseline, profile, lint."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
# The CPU build of torch for test environments (pip on a CPU-only runner resolves it to +cpu;
# elsewhere point PIP_INDEX_URL or PIP_EXTRA_INDEX_URL at a CPU wheel index).
TORCH_CPU = os.environ.get("COSMOS3_TORCH", "torch==2.13.0")

# One rule for every session: an interpreter that already has torch (a GPU runner's own
# environment, possibly offline) is used as it is, with no venv and no installs, so it never
# reinstalls its torch. Otherwise nox builds a venv with the CPU wheel and this package.
OWN_TORCH = importlib.util.find_spec("torch") is not None
BACKEND = "none" if OWN_TORCH else "venv"

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = BACKEND


def prepare(session: nox.Session) -> str:
    """Make `cosmos3` and `bench` importable; return the interpreter the session runs.

    Installs only where nox built a venv. Without one it is nox's own interpreter (the one
    that has torch), not whatever `python` comes first on PATH.
    """
    if session.venv_backend == "none":
        # Keep a PYTHONPATH the runner set (e.g. wheels unpacked to /tmp/site).
        session.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        return sys.executable
    session.install(TORCH_CPU)
    session.install("-e", ".")
    return "python"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the CPU test suite (tiny presets, seconds per test)."""
    python = prepare(session)
    session.run(python, "-m", "pytest", *(session.posargs or ["-q"]))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark, gate against baselines/ and report to results/<run-id>/; fails on a regression."""
    python = prepare(session)
    session.run(python, "-m", "bench", "run", *session.posargs)


@nox.session
def baseline(session: nox.Session) -> None:
    """Record baselines/<device>/<preset>.json from a fresh run (pass --force to replace one)."""
    python = prepare(session)
    session.run(python, "-m", "bench", "baseline", *session.posargs)


@nox.session
def profile(session: nox.Session) -> None:
    """Profile one request's denoising steps and check the trace holds exactly those steps."""
    python = prepare(session)
    session.run(
        python, "-m", "cosmos3", "--profile", "--no-progress",
        *(session.posargs or ["--num-profiled-timesteps", "3"]),
    )


@nox.session(venv_backend="venv")
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff")
    session.run("ruff", "check", "cosmos3", "bench", "tests", "noxfile.py")


# Share of mutants the tests must kill, over all modules in pyproject's [tool.mutmut] source_paths.
MUTATION_SCORE_MIN = 0.90


@nox.session(venv_backend="venv")
def mutants(session: nox.Session) -> None:
    """Mutation-test the modules listed in pyproject's [tool.mutmut]; fails unless 90% of mutants are killed."""
    session.install(TORCH_CPU)
    session.install("-e", ".", "mutmut==3.8.1")
    # mutmut forks a worker per mutant; torch's OpenMP pool, once started, deadlocks a forked
    # child. One thread per worker also suits the parallel workers (one per core).
    session.env["OMP_NUM_THREADS"] = "1"
    # A fresh run every time: mutmut keeps old verdicts for unchanged code even after tests change.
    # (A session.run, so that --install-only skips it along with the run.)
    session.run("python", "-c", "import shutil; shutil.rmtree('mutants', ignore_errors=True)")
    session.run("mutmut", "run", *session.posargs)
    # One "    <module>.x<function>__mutmut_<n>: <status>" line per mutant.
    listing = session.run("mutmut", "results", "--all", "true", silent=True)
    if listing is None:  # --install-only
        return
    counts: dict[str, dict[str, int]] = {}
    for line in listing.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        # "<module>.x_<function>__mutmut_<n>" or "<module>.xǁ<Class>ǁ<method>__mutmut_<n>"
        module = name.split(".x_")[0].split(".xǁ")[0]
        by_status = counts.setdefault(module, {})
        by_status[status] = by_status.get(status, 0) + 1
    # Only "killed" counts. A timeout is listed but not credited: a hang (e.g. torch deadlocked
    # in a forked worker) looks just like one, and must not pass for a kill.
    killed = {module: c.get("killed", 0) for module, c in counts.items()}
    total = {module: sum(c.values()) for module, c in counts.items()}
    for module in sorted(counts):
        breakdown = ", ".join(f"{n} {status}" for status, n in sorted(counts[module].items()))
        session.log(f"{module}: {killed[module]}/{total[module]} killed ({breakdown})")
    all_killed, all_total = sum(killed.values()), sum(total.values())
    if not all_total:
        session.error("mutmut listed no mutants")
    score = all_killed / all_total
    session.log(f"mutation score: {all_killed}/{all_total} killed ({score:.1%}; needs {MUTATION_SCORE_MIN:.0%})")
    if score < MUTATION_SCORE_MIN:
        session.error(f"mutation score {score:.1%} < {MUTATION_SCORE_MIN:.0%}; `mutmut results` lists the survivors")
