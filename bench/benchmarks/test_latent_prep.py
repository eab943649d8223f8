"""Latent preparation per encode strategy over the preset's grid, with each optimisation's equivalence check."""

from __future__ import annotations

import pytest
import torch

from bench.harness import RunControls, equivalence_for, measure, record_case, seeded_image
from cosmos3.request import Req
from cosmos3.stages import Cosmos3LatentPreparationStage


def i2v_request(case, pixels: torch.Tensor) -> Req:
    return Req(height=case.height, width=case.width, num_frames=case.num_frames, image=pixels, image_pixels=pixels)


@pytest.mark.cases("latent_prep")
def test_latent_prep(benchmark, case, vae, preset, device):
    """The stage as upstream runs it: noise, encode by strategy, mask and mix."""
    strategy = RunControls.from_env().strategy_for(case.strategy)  # a negative control may revert it
    stage = Cosmos3LatentPreparationStage(vae, encode_strategy=strategy, dtype=preset.dtype)
    pixels = seeded_image(case.width, case.height, device)
    record_case(benchmark, spec=case)
    measure(benchmark, lambda: stage(i2v_request(case, pixels)), device=device, case_name=case.name)
    # An optimisation must keep the output: checked on the same request, outside the timed rounds.
    equivalence = equivalence_for(vae, i2v_request(case, pixels), case.strategy, strategy, preset.dtype)
    if equivalence is not None:
        record_case(benchmark, equivalence=equivalence)
