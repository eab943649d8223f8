"""The VAE encode alone, on a video prepared outside the timed region (1 frame = the single-frame path)."""

from __future__ import annotations

import pytest

from bench.harness import measure, record_case, seeded_image
from cosmos3.stages.latent_preparation import encode_input
from cosmos3.vae import encode_latents


@pytest.mark.cases("vae_encode")
def test_vae_encode(benchmark, case, vae, device):
    pixels = seeded_image(case.width, case.height, device)
    video = encode_input(pixels, case.num_frames, "single_frame" if case.num_frames == 1 else "expand")
    record_case(benchmark, spec=case)
    measure(benchmark, lambda: encode_latents(vae, video), device=device, case_name=case.name)
