"""nox sessions: tests, bench, baseline, calibrate, compare, profile, lint, mutants."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion

ROOT = Path(__file__).parent
# The CPU build of torch for test environments (pip on a CPU-only runner resolves it to +cpu;
# elsewhere point PIP_INDEX_URL or PIP_EXTRA_INDEX_URL at a CPU wheel index).
TORCH_CPU = os.environ.get("COSMOS3_TORCH", "torch==2.13.0")

# One rule for every session: an interpreter that already has torch (a GPU runner's own
# environment, possibly offline) is used as it is, with no venv, so its torch is never replaced;
# only what it lacks is installed into it, with torch held at its version. Otherwise nox builds
# a venv with the CPU wheel and this package.
OWN_TORCH = importlib.util.find_spec("torch") is not None
BACKEND = "none" if OWN_TORCH else "venv"

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = BACKEND

# Runs in the interpreter being checked (not nox's, whose sys.path may differ): its installed
# distributions in sys.path order (PYTHONPATH first, as imports see them) and its marker values.
_PROBE = r"""
import importlib.metadata, importlib.util, json, os, platform, sys

def full_version(info):
    version = f"{info.major}.{info.minor}.{info.micro}"
    return version if info.releaselevel == "final" else version + info.releaselevel[0] + str(info.serial)

dists = []
for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"]
    if name:
        dists.append({"name": name, "version": dist.version, "requires": dist.requires or []})
markers = {
    "implementation_name": sys.implementation.name,
    "implementation_version": full_version(sys.implementation.version),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}
found = {name: importlib.util.find_spec(name) is not None for name in ("torch", "pip")}
print(json.dumps({"dists": dists, "markers": markers, "importable": found}))
"""


@dataclasses.dataclass(frozen=True)
class Unmet:
    """One requirement the interpreter does not satisfy, and why."""

    requirement: str  # as pip takes it, marker dropped (it held for this interpreter)
    found: str | None  # the installed version, None when absent
    needed_by: str  # "pyproject.toml" or the distribution that requires it


@dataclasses.dataclass(frozen=True)
class InstallPlan:
    """What an interpreter lacks of a set of requirements; the torch it has is kept, never walked."""

    python: str
    torch_version: str | None  # the installed torch, held at exactly this version; None: no torch
    unmet: tuple[Unmet, ...]
    has_pip: bool

    @property
    def requirements(self) -> list[str]:
        """What to pass to pip install, each once."""
        return list(dict.fromkeys(u.requirement for u in self.unmet))

    @property
    def constraint(self) -> str | None:
        """A pip constraint line that keeps the installed torch (e.g. torch==2.11.0+cu130)."""
        return None if self.torch_version is None else f"torch=={self.torch_version}"


def plan_install(python: str, requirements: Sequence[str], env: Mapping[str, str] | None = None) -> InstallPlan:
    """Check `requirements` and everything they require in turn against `python`'s installed distributions.

    Looked up with importlib.metadata in that interpreter (run with `env`, so PYTHONPATH counts).
    A requirement is unmet when its distribution is absent or its version is outside the
    specifier; an unmet one is not walked further (pip resolves what it needs). Torch, where
    present, is the runner's: never planned, and its own dependencies are left alone.
    """
    probe = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise RuntimeError(f"{python} could not list its distributions:\n{probe.stderr}")
    found = json.loads(probe.stdout)
    installed: dict[str, dict] = {}
    for dist in found["dists"]:  # the first on sys.path is the one that imports
        installed.setdefault(canonicalize_name(dist["name"]), dist)
    torch = installed.get("torch")
    if found["importable"]["torch"] and torch is None:
        raise RuntimeError(f"{python} imports torch but has no metadata for it, so pip cannot hold it")

    markers = found["markers"]
    unmet: dict[str, Unmet] = {}
    walked: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(line), "pyproject.toml", ("",)) for line in requirements]
    while todo:
        req, needed_by, extras = todo.pop(0)
        if req.marker is not None and not any(req.marker.evaluate({**markers, "extra": e}) for e in extras):
            continue
        name = canonicalize_name(req.name)
        if name == "torch" and torch is not None:
            continue
        dist = installed.get(name)
        if dist is None or not _satisfies(req, dist["version"]):
            line = Requirement(str(req))
            line.marker = None
            unmet.setdefault(str(line), Unmet(str(line), dist and dist["version"], needed_by))
            continue
        key = (name, frozenset(req.extras))
        if key in walked:
            continue
        walked.add(key)
        todo += [(Requirement(line), dist["name"], ("", *sorted(req.extras))) for line in dist["requires"]]
    return InstallPlan(python, torch and torch["version"], tuple(unmet.values()), found["importable"]["pip"])


def _satisfies(req: Requirement, version: str) -> bool:
    try:
        return req.specifier.contains(version, prereleases=True)
    except InvalidVersion:  # a version pip cannot compare either: let pip decide
        return False


def prepare(session: nox.Session, *extras: str, python: str = sys.executable) -> str:
    """Make `cosmos3` and `bench` importable; return the interpreter the session runs.

    In a venv nox built: the CPU torch and this package (with `extras`). Without one (the
    interpreter that has torch, nox's own, not whatever `python` comes first on PATH): the repository
    on PYTHONPATH and, with pip, whatever of pyproject's dependencies (and `extras`) it lacks,
    with its torch held at the installed version; nothing at all where it lacks nothing.
    """
    if session.venv_backend != "none":
        session.install(TORCH_CPU)
        session.install("-e", f".[{','.join(extras)}]" if extras else ".")
        return "python"
    # Keep a PYTHONPATH the runner set (e.g. wheels unpacked to /tmp/site).
    session.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    requirements = [*PROJECT["dependencies"], *(r for e in extras for r in PROJECT["optional-dependencies"][e])]
    env = {k: v for k, v in {**os.environ, **session.env}.items() if v is not None}  # nox's None: unset
    plan = plan_install(python, requirements, env)
    if not plan.unmet:
        session.log(f"nothing to install: {python} has every dependency of pyproject.toml (torch {plan.torch_version})")
        return python
    lacking = "; ".join(
        f"{u.requirement} ({'absent' if u.found is None else 'has ' + u.found}, for {u.needed_by})" for u in plan.unmet
    )
    if not plan.has_pip:
        session.error(f"{python} has no pip to install what it lacks: {lacking}")
    constraint = Path(session.create_tmp()) / "torch-constraint.txt"
    constraint.write_text(plan.constraint + "\n")
    session.log(f"installing into {python}, {plan.constraint} held: {lacking}")
    session.run_install(python, "-m", "pip", "install", "-c", str(constraint), *plan.requirements, env=env)
    still = plan_install(python, requirements, env).unmet
    if still:  # e.g. an older copy earlier on PYTHONPATH shadows the one pip just installed
        session.error("still unmet after pip install: " + ", ".join(f"{u.requirement} (has {u.found})" for u in still))
    return python


@nox.session
def tests(session: nox.Session) -> None:
    """Run the CPU test suite (tiny presets, seconds per test)."""
    python = prepare(session, "dev")
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
def calibrate(session: nox.Session) -> None:
    """Measure the gate's false alarms (A/A runs) and its power on injected GPU work; write calibration.md."""
    python = prepare(session)
    session.run(python, "-m", "bench", "calibrate", *session.posargs)


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
    """ruff check, and the GitHub workflows against GitHub's schema."""
    session.install("ruff", "check-jsonschema")
    session.run("ruff", "check", "cosmos3", "bench", "tests", "tools", "noxfile.py")
    workflows = sorted(str(p.relative_to(ROOT)) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)


@nox.session
def compare(session: nox.Session) -> None:
    """Compare the working tree with a git ref, interleaved on this machine: nox -s compare -- --base REF."""
    python = prepare(session)
    session.run(python, "-m", "bench", "compare", *session.posargs)


# Share of mutants the tests must kill, over all modules in pyproject's [tool.mutmut] source_paths.
MUTATION_SCORE_MIN = 0.90


@nox.session(venv_backend="venv")
def mutants(session: nox.Session) -> None:
    """Mutation-test the modules listed in pyproject's [tool.mutmut]; fails unless 90% of mutants are killed."""
    session.install(TORCH_CPU)
    session.install("-e", ".[dev]", "mutmut==3.8.1")  # dev: the noxfile tests import nox
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
