"""Latent preparation per encode strategy over the preset's grid, with each optimisation's equivalence check."""

from __future__ import annotations

import pytest

from bench.core.kinds import Kind
from bench.measure import workloads
from bench.measure.harness import RunControls, benchmark_case


@pytest.mark.cases(Kind.LATENT_PREP)
def test_latent_prep(benchmark, case, vae, preset, device):
    """The stage as upstream runs it (bench.measure.workloads.latent_prep): noise, encode by strategy, mask and mix."""
    work = workloads.latent_prep(case, vae, dtype=preset.dtype, controls=RunControls.from_env())
    benchmark_case(benchmark, case, work, device=device)
