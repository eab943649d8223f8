"""Latent preparation per encode strategy over the preset's grid, with the frame-0 equivalence check."""

from __future__ import annotations

import pytest

from bench import workloads
from bench.harness import RunControls, equivalence_record, measure, record_case, seeded_image
from cosmos3.equivalence import check_encode_equivalence


@pytest.mark.cases("latent_prep")
def test_latent_prep(benchmark, case, vae, preset, device):
    """The stage as upstream runs it (bench.workloads.latent_prep): noise, encode by strategy, mask and mix."""
    work = workloads.latent_prep(case, vae, dtype=preset.dtype, device=device, controls=RunControls.from_env())
    record_case(benchmark, spec=case)
    measure(benchmark, work.fn, device=device, case_name=case.name, policy=work.policy)
    if case.strategy == "single_frame":
        # The optimisation must keep the output: checked on the same (seeded) request, outside the timed rounds.
        pixels = seeded_image(case.width, case.height, device)
        report = check_encode_equivalence(vae, workloads.i2v_request(case, pixels), dtype=preset.dtype)
        record_case(benchmark, equivalence=equivalence_record(report))
