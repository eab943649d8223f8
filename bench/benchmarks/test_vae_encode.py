"""The VAE encode alone, on a video prepared outside the timed region (1 frame = the single-frame path)."""

from __future__ import annotations

import pytest

from bench.core.kinds import Kind
from bench.measure import workloads
from bench.measure.harness import benchmark_case


@pytest.mark.cases(Kind.VAE_ENCODE)
def test_vae_encode(benchmark, case, vae, device):
    benchmark_case(benchmark, case, workloads.vae_encode(case, vae, device=device), device=device)
