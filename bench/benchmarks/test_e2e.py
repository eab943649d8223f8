"""End-to-end I2V requests per encode strategy, with device-synchronised per-stage times."""

from __future__ import annotations

import pytest

from bench.core.kinds import Kind
from bench.measure import workloads
from bench.measure.harness import RunControls, benchmark_case


@pytest.fixture
def image_path(tmp_path_factory, case):
    return workloads.write_condition_image(tmp_path_factory.mktemp("e2e") / "condition.png", case.width, case.height)


@pytest.mark.cases(Kind.E2E)
def test_e2e(benchmark, case, components, grid, image_path, device):
    work = workloads.e2e(case, components, image_path=image_path, steps=grid.e2e_steps,
                         controls=RunControls.from_env())
    benchmark_case(benchmark, case, work, device=device)
