"""A whole image-to-video request through diffusers' Cosmos3OmniPipeline.__call__ as shipped, with its
device-synchronised split into prepare_latents, the denoise loop and decode."""

from __future__ import annotations

import pytest

from bench.core.kinds import Kind
from bench.measure import workloads
from bench.measure.harness import benchmark_case


@pytest.mark.cases(Kind.DIFFUSERS_E2E)
def test_diffusers_e2e(benchmark, case, components, grid, device):
    """bench.measure.workloads.diffusers_e2e: diffusers' own `__call__`, on e2e's VAE, transformer and request."""
    work = workloads.diffusers_e2e(case, components, steps=grid.e2e_steps)
    benchmark_case(benchmark, case, work, device=device)
