"""Denoising: the Cosmos3 transformer driven as diffusers' pipeline drives it, guidance, the I2V frame-0
write-back, odd latent sizes, the scheduler wiring."""

from __future__ import annotations

import PIL.Image
import pytest
import torch

from cosmos3 import diffusers_omni, dit_inputs
from cosmos3.components import build_components
from cosmos3.equivalence import check_encode_equivalence
from cosmos3.errors import InputError
from cosmos3.request import Req
from cosmos3.stages import (
    Cosmos3DenoisingStage,
    Cosmos3LatentPreparationStage,
    Cosmos3TimestepPreparationStage,
)
from tests import tiny


def ready_request(req: Req) -> Req:
    """Run latent and timestep preparation so the request can enter denoising."""
    c = tiny.components()
    req = Cosmos3LatentPreparationStage(c.vae, dtype=c.dtype)(req)
    return Cosmos3TimestepPreparationStage(c.preset, c.device)(req)


def denoiser(stage_cls=Cosmos3DenoisingStage, **kwargs) -> Cosmos3DenoisingStage:
    c = tiny.components()
    return stage_cls(c.transformer, c.omni, c.prompt, **kwargs)


SHAPE = {"height": 64, "width": 96, "num_frames": 9}


@pytest.mark.parametrize("i2v", [False, True])
def test_the_loop_is_diffusers_cosmos3_pipeline_s_loop(i2v):
    """Two steps of guided denoising from the same latents: ours against diffusers' own
    Cosmos3OmniPipeline.__call__ (output_type="latent"), the prompt tokenized for this request's shape."""
    c = tiny.components()
    req = ready_request(tiny.i2v_request(**SHAPE, num_inference_steps=2) if i2v else Req(**SHAPE, num_inference_steps=2))
    start = req.latents.clone()
    ours = Cosmos3DenoisingStage(c.transformer, c.omni, dit_inputs.prompt_ids(c.omni, **SHAPE))(req).latents
    image = PIL.Image.new("RGB", (96, 64)) if i2v else None  # diffusers encodes it, then takes `latents` instead
    theirs = c.omni(prompt=diffusers_omni.PROMPT, image=image, **SHAPE, num_inference_steps=2, guidance_scale=4.0,
                    fps=dit_inputs.FPS, latents=start.clone(), output_type="latent", return_dict=False)[0]
    assert theirs.shape == ours.shape and not torch.equal(ours, start)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-4, atol=1e-5)


def test_a_token_layout_of_our_own_would_be_caught():
    """Negative control of the test above: one text token fewer in the conditional pass moves the result."""
    c = tiny.components()
    ids = dit_inputs.prompt_ids(c.omni, **SHAPE)
    short = dit_inputs.PromptIds(ids.cond[:-1], ids.uncond)
    a = Cosmos3DenoisingStage(c.transformer, c.omni, ids)(ready_request(Req(**SHAPE, num_inference_steps=2)))
    b = Cosmos3DenoisingStage(c.transformer, c.omni, short)(ready_request(Req(**SHAPE, num_inference_steps=2)))
    assert (a.latents - b.latents).abs().max() > 1e-4


def test_guidance_actually_mixes_the_branches():
    """Guard for the test above: with guidance > 1 the result differs from the cond branch alone."""
    guided = denoiser()(ready_request(tiny.i2v_request(num_frames=9, num_inference_steps=2))).latents
    cond = denoiser()(ready_request(tiny.i2v_request(num_frames=9, num_inference_steps=2, guidance_scale=1.0)))
    assert (guided - cond.latents).abs().max() > 1e-3


class RecordingDenoiser(Cosmos3DenoisingStage):
    def after_step(self, req: Req) -> None:
        self.seen = getattr(self, "seen", []) + [req.latents.clone()]
        super().after_step(req)


def test_frame0_equals_image_latent_after_every_step():
    req = ready_request(tiny.i2v_request(num_frames=9, num_inference_steps=4))
    stage = denoiser(RecordingDenoiser)
    out = stage(req)
    assert len(stage.seen) == 4
    for latents in stage.seen:
        assert torch.equal(latents[:, :, :1], out.image_latent)
    assert not torch.equal(stage.seen[0][:, :, 1:], stage.seen[-1][:, :, 1:])  # the rest does move


def test_t2v_frame0_is_denoised_too():
    req = ready_request(Req(height=64, width=96, num_frames=9, num_inference_steps=2))
    start = req.latents.clone()
    out = denoiser()(req)
    assert not torch.equal(out.latents[:, :, :1], start[:, :, :1])


def test_odd_latent_height_is_padded_and_cropped():
    """720p has latent height 45; diffusers pads the patch-2 grid and crops back (here 80/16 = 5, 112/16 = 7)."""
    req = ready_request(tiny.i2v_request(height=80, width=112, num_frames=5, num_inference_steps=2))
    out = denoiser()(req)
    assert out.latents.shape == (1, 48, 2, 5, 7)
    assert torch.isfinite(out.latents).all()


def test_timesteps_follow_the_request():
    req = ready_request(tiny.i2v_request(num_frames=5, num_inference_steps=7))
    assert len(req.timesteps) == 7 and req.scheduler.config.flow_shift == 10.0
    t2i = ready_request(Req(height=64, width=96, num_frames=1, output_kind="image", num_inference_steps=3))
    assert t2i.scheduler.config.flow_shift == 3.0


def test_denoising_needs_prepared_inputs():
    with pytest.raises(InputError, match="latents: must be set by the earlier stages"):
        denoiser()(Req(height=64, width=96, num_frames=5))


def test_bf16_latents_stay_bf16_and_frame0_stays_bitwise():
    """wan22 runs in bf16: the scheduler must not hand the bf16 DiT float32 latents."""
    c = build_components(tiny.PRESET, "cpu", dtype=torch.bfloat16)
    req = tiny.i2v_request(height=80, width=96, num_frames=9, num_inference_steps=2)
    assert check_encode_equivalence(c.vae, req, dtype=torch.bfloat16).bitwise
    req = Cosmos3LatentPreparationStage(c.vae, dtype=torch.bfloat16)(req)
    req = Cosmos3TimestepPreparationStage(c.preset, c.device)(req)
    out = Cosmos3DenoisingStage(c.transformer, c.omni, c.prompt)(req)
    assert out.latents.dtype == torch.bfloat16
    assert torch.equal(out.latents[:, :, :1], out.image_latent)
