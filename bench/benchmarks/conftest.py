"""Benchmark fixtures: preset and device, the parts the workloads share, grid parametrisation, the run's environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.core import cases
from bench.core.environment import collect_environment, run_label
from bench.core.records import encode_record, matches
from bench.measure import workloads
from bench.measure.harness import RunControls, die_with_parent, single_thread_on_cpu
from cosmos3.presets import get_preset, resolve_preset_name


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cosmos3")
    group.addoption("--preset", default="auto", help="tiny | wan22 | auto (wan22 with CUDA, else tiny)")
    group.addoption("--weights-dir", default=None, help="local diffusers folder with vae/ and transformer/")
    group.addoption("--dit-layers", type=int, default=None, help="DiT stand-in depth (default: the preset's)")
    group.addoption("--grid", default="default", help="default | extended (adds the upstream table's e2e case and e2e first_frame_2d)")
    group.addoption("--case", action="append", default=[], metavar="PATTERN",
                    help="run only cases whose name matches PATTERN (* and ? wild, brackets literal); repeatable")


def pytest_configure(config: pytest.Config) -> None:
    single_thread_on_cpu(_device())
    parent = RunControls.from_env().parent_pid
    if parent is not None:
        die_with_parent(parent)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the kinds in a fixed order (stage, component, whole pipeline), whatever -k selects.

    Peak memory includes what earlier cases left resident on the device, so a subset run
    (-k test_latent_prep) must see the same device state as the full run its baseline came from.
    """
    order = {kind: i for i, kind in enumerate(cases.KINDS)}

    def rank(item: pytest.Item) -> int:
        marker = item.get_closest_marker("cases")
        return order.get(marker.args[0], len(order)) if marker else len(order)

    items.sort(key=rank)  # stable: parametrisation order is kept within a kind
    patterns = config.getoption("--case")
    if patterns:
        keep = [i for i in items if _case_name(i) is not None and any(matches(_case_name(i), p) for p in patterns)]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def _case_name(item: pytest.Item) -> str | None:
    spec = getattr(item, "callspec", None)
    case = spec.params.get("case") if spec else None
    return case.name if case is not None else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("cases")
    if marker is None or "case" not in metafunc.fixturenames:
        return
    preset = resolve_preset_name(metafunc.config.getoption("--preset"))
    specs = cases.KINDS[marker.args[0]].cases(preset, metafunc.config.getoption("--grid"))
    metafunc.parametrize("case", specs, ids=[cases.param_id(s) for s in specs])


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    preset = get_preset(resolve_preset_name(config.getoption('--preset')))
    label = run_label(preset.name, config.getoption("--dit-layers"))
    env = collect_environment(_device(), label, preset.dtype, RunControls.from_env().active)
    machine_info["cosmos3_environment"] = encode_record(env)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return _device()


@pytest.fixture(scope="session")
def preset(pytestconfig: pytest.Config):
    return get_preset(resolve_preset_name(pytestconfig.getoption('--preset')), dit_num_layers=pytestconfig.getoption("--dit-layers"))


@pytest.fixture(scope="session")
def grid(preset, pytestconfig: pytest.Config) -> cases.Grid:
    return cases.grid_for(preset.name, pytestconfig.getoption("--grid"))


@pytest.fixture(scope="session")
def weights_dir(pytestconfig: pytest.Config) -> Path | None:
    raw = pytestconfig.getoption("--weights-dir")
    return Path(raw) if raw else None


@pytest.fixture(scope="session")
def models(preset, device, grid, weights_dir, tmp_path_factory) -> workloads.Models:
    """The parts every kind's workload is built from, as the compare worker builds them: the VAE, diffusers'
    pipeline over it, the Cosmos3 transformer (on the first end-to-end case) and the condition images, each
    built on first use, outside the timed rounds, and kept for the cases after it."""
    return workloads.Models(preset, device, grid, tmp_path_factory.mktemp("models"), weights_dir=weights_dir)
