"""The noxfile's set-up of an interpreter with its own torch: what it plans, installs, and holds."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.repo import REPO

ROOT = REPO
RUNNER_TORCH = "2.11.0+cu130"  # a CUDA build's version, as a GPU runner has it


def _load_noxfile():
    spec = importlib.util.spec_from_file_location("noxfile", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["noxfile"] = module  # as nox does: its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


noxfile = _load_noxfile()
DEPENDENCIES = noxfile.PROJECT["dependencies"]


def plant(site: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """An installed distribution as importlib.metadata and pip see it: a dist-info and an empty module."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (site / name).mkdir()
    (site / name / "__init__.py").write_text("")


@pytest.fixture(scope="module")
def runner_python(tmp_path_factory) -> str:
    """A stand-in GPU runner: a fresh venv (with pip) holding a CUDA torch and nothing else of ours."""
    venv = tmp_path_factory.mktemp("runner") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    plant(Path(purelib), "torch", RUNNER_TORCH)
    return python


@pytest.fixture
def outer_env(monkeypatch) -> dict[str, str]:
    """The environment without a PYTHONPATH of the machine running the tests (it may stage wheels)."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    return dict(os.environ)


class FakeSession:
    """The part of nox.Session that prepare() uses; records what it logs, installs and runs."""

    def __init__(self, tmp: Path, venv_backend: str = "none") -> None:
        self.venv_backend = venv_backend
        self.env: dict[str, str | None] = {"PYTHONHOME": None}  # nox's way to unset a variable
        self.logs: list[str] = []
        self.installs: list[tuple[str, ...]] = []
        self.tmp = tmp

    def log(self, message: str) -> None:
        self.logs.append(message)

    def create_tmp(self) -> str:
        return str(self.tmp)

    def install(self, *args: str) -> None:
        self.installs.append(args)

    def run_install(self, *args: str, env=None) -> None:
        self.installs.append(args)

    def error(self, message: str) -> None:
        raise SessionError(message)


class SessionError(Exception):
    pass


@pytest.mark.slow  # a fresh venv: a process start (runner_python)
def test_plan_holds_the_runners_torch_and_lists_what_it_lacks(runner_python, outer_env):
    plan = noxfile.plan_install(runner_python, DEPENDENCIES, outer_env)
    assert plan.torch_version == RUNNER_TORCH
    assert plan.constraint == f"torch=={RUNNER_TORCH}"
    assert "diffusers>=0.42.1" in plan.requirements and "transformers>=4.45" in plan.requirements
    assert not any(r.startswith("torch") for r in plan.requirements)
    assert plan.has_pip


@pytest.mark.slow  # a fresh venv: a process start (runner_python)
def test_plan_sees_wheels_staged_on_pythonpath_and_what_they_need(runner_python, outer_env, tmp_path):
    # An offline runner: diffusers unpacked with --no-deps to a folder on PYTHONPATH, without huggingface_hub.
    plant(tmp_path, "diffusers", "0.42.1", (
        "huggingface-hub<3.0,>=1.32.0",
        "importlib_metadata",
        'tomli; python_version < "3.0"',  # not for this interpreter
        'pytest; extra == "test"',  # an extra nobody asked for
    ))
    plant(tmp_path, "importlib_metadata", "10.2.0")
    plan = noxfile.plan_install(runner_python, ["torch>=2.4", "diffusers>=0.35"], {**outer_env, "PYTHONPATH": str(tmp_path)})
    assert plan.unmet == (noxfile.Unmet("huggingface-hub<3.0,>=1.32.0", None, "diffusers"),)


@pytest.mark.slow  # a fresh venv: a process start (runner_python)
def test_plan_flags_a_version_outside_the_specifier(runner_python, outer_env, tmp_path):
    plant(tmp_path, "diffusers", "0.30.0")
    plan = noxfile.plan_install(runner_python, ["diffusers>=0.35"], {**outer_env, "PYTHONPATH": str(tmp_path)})
    assert plan.unmet == (noxfile.Unmet("diffusers>=0.35", "0.30.0", "pyproject.toml"),)


@pytest.mark.slow  # a fresh venv: a process start (runner_python)
def test_the_runners_torch_is_held_as_it_is_and_its_own_needs_left_alone(runner_python, outer_env, tmp_path):
    # Staged first on PYTHONPATH, this torch shadows the venv's; it is older than pyproject asks for.
    plant(tmp_path, "torch", "2.3.0", ("nvidia-cuda-runtime-cu12==12.1.105; platform_system == 'Linux'",))
    plan = noxfile.plan_install(runner_python, ["torch>=2.4", "tqdm"], {**outer_env, "PYTHONPATH": str(tmp_path)})
    assert plan.torch_version == "2.3.0"
    assert plan.requirements == ["tqdm"]


@pytest.mark.slow  # a fresh venv: a process start (runner_python)
def test_prepare_installs_what_is_lacking_with_torch_held(runner_python, outer_env, tmp_path):
    session = FakeSession(tmp_path)
    # The fake pip installs nothing, so the check after it finds the same gaps and stops the session.
    with pytest.raises(SessionError, match=r"still unmet after pip install: diffusers>=0\.42\.1"):
        noxfile.prepare(session, python=runner_python)
    [install] = session.installs
    constraint = tmp_path / "torch-constraint.txt"
    assert install[:5] == (runner_python, "-m", "pip", "install", "-c") and install[5] == str(constraint)
    assert constraint.read_text() == f"torch=={RUNNER_TORCH}\n"
    assert "diffusers>=0.42.1" in install[6:] and not any(r.startswith("torch") for r in install[6:])
    assert session.env["PYTHONPATH"] == str(ROOT)
    assert f"torch=={RUNNER_TORCH} held" in session.logs[0] and "diffusers>=0.42.1 (absent" in session.logs[0]


def test_nothing_is_installed_where_everything_is_present(tmp_path):
    # The interpreter running these tests has every dependency (nox installed them, or the runner did).
    plan = noxfile.plan_install(sys.executable, [*DEPENDENCIES, "nox"], dict(os.environ))
    assert plan.unmet == ()
    session = FakeSession(tmp_path)
    assert noxfile.prepare(session, "dev", python=sys.executable) == sys.executable
    assert session.installs == []
    assert session.logs == [
        f"nothing to install: {sys.executable} has every dependency of pyproject.toml (torch {plan.torch_version})"
    ]


def test_a_venv_gets_the_cpu_torch_and_the_package(tmp_path):
    session = FakeSession(tmp_path, venv_backend="venv")
    assert noxfile.prepare(session, "dev") == "python"
    assert session.installs == [(noxfile.TORCH_CPU,), ("-e", ".[dev]")]


@pytest.mark.slow
def test_pip_installs_the_plan_without_touching_torch(runner_python, outer_env, tmp_path):
    """pip itself, in dry-run mode, on the plan: it resolves from the index (~20 s)."""
    plan = noxfile.plan_install(runner_python, DEPENDENCIES, outer_env)
    constraint = tmp_path / "torch-constraint.txt"
    constraint.write_text(plan.constraint + "\n")
    pip = [runner_python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", "-c", str(constraint)]
    done = subprocess.run([*pip, *plan.requirements], check=False, env=outer_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    names = {item["metadata"]["name"].lower() for item in json.loads(done.stdout)["install"]}
    assert {"diffusers", "accelerate", "huggingface-hub"} <= {n.replace("_", "-") for n in names}
    assert "torch" not in names
    # Something that asks for another torch makes pip refuse, rather than replace the runner's.
    refused = subprocess.run([*pip, "torch>=2.12", "tqdm"], check=False, env=outer_env, capture_output=True, text=True)
    assert refused.returncode != 0 and "ResolutionImpossible" in refused.stderr
