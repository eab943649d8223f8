"""Latent preparation per encode strategy over the preset's grid, with each optimisation's equivalence check."""

from __future__ import annotations

import pytest

from bench import workloads
from bench.harness import RunControls, measure, record_case


@pytest.mark.cases("latent_prep")
def test_latent_prep(benchmark, case, vae, preset, device):
    """The stage as upstream runs it (bench.workloads.latent_prep): noise, encode by strategy, mask and mix."""
    work = workloads.latent_prep(case, vae, dtype=preset.dtype, device=device, controls=RunControls.from_env())
    record_case(benchmark, spec=case)
    measure(benchmark, work.fn, device=device, case_name=case.name, policy=work.policy, profile=work.profile)
    # An optimisation must keep the output: checked on the same request, outside the timed rounds.
    equivalence = work.equivalence()
    if equivalence is not None:
        record_case(benchmark, equivalence=equivalence)
