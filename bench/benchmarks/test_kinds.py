"""Every benchmark kind, one test each, made from the registry.

`test_<kind>` times each case of the preset's grid of that kind (bench.core.cases.KINDS): its workload is the
kind's entry in bench.measure.workloads.BUILDERS, built from the parts this process shares (the `models`
fixture, as in the compare worker), and timed by the one measuring loop (bench.measure.harness.benchmark_case).
A new kind needs nothing here: its Kind member, its KINDS entry and its BUILDERS entry make its test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench.core.kinds import Kind
from bench.measure import workloads
from bench.measure.harness import RunControls, benchmark_case


def _benchmark_of(kind: Kind) -> Callable[..., None]:
    @pytest.mark.cases(kind)
    def test(benchmark, case, models, device):
        work = workloads.build(case, models, RunControls.from_env())  # a negative control may revert its strategy
        benchmark_case(benchmark, case, work, device=device)

    test.__name__ = test.__qualname__ = f"test_{kind}"  # what -k and the reports name: test_latent_prep, ...
    return test


for _kind in Kind:
    globals()[f"test_{_kind}"] = _benchmark_of(_kind)
