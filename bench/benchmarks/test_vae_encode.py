"""The VAE encode alone, on a video prepared outside the timed region (1 frame = the single-frame path)."""

from __future__ import annotations

import pytest

from bench import workloads
from bench.harness import measure, record_case


@pytest.mark.cases("vae_encode")
def test_vae_encode(benchmark, case, vae, device):
    work = workloads.vae_encode(case, vae, device=device)
    record_case(benchmark, spec=case)
    measure(benchmark, work.fn, device=device, case_name=case.name, policy=work.policy)
