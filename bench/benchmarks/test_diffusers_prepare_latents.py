"""diffusers' Cosmos3OmniPipeline.prepare_latents, as shipped and with the single-frame encode patch, over the
latent_prep grid, with the patch's equivalence checked on diffusers' own outputs."""

from __future__ import annotations

import pytest

from bench.core.kinds import Kind
from bench.measure import workloads
from bench.measure.harness import RunControls, benchmark_case


@pytest.fixture(scope="module")
def pipe(vae):
    """diffusers' pipeline over the shared VAE (no transformer, a local tokenizer, the safety checker off)."""
    return workloads.diffusers_pipeline(vae)


@pytest.mark.cases(Kind.DIFFUSERS_PREPARE_LATENTS)
def test_diffusers_prepare_latents(benchmark, case, pipe, device):
    """bench.measure.workloads.diffusers_prepare_latents: diffusers' preprocessing, video, encode, noise and mix."""
    work = workloads.diffusers_prepare_latents(case, pipe, device=device, controls=RunControls.from_env())
    benchmark_case(benchmark, case, work, device=device)
