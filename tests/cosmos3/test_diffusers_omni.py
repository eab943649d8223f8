"""diffusers' Cosmos3OmniPipeline.prepare_latents, as shipped and with the one-frame encode patch: the same
latents and condition mask on diffusers' own outputs, and a patch with an off-by-one latent frame fails."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("transformers")  # the pipeline module imports it (the dev extra installs it)

from cosmos3 import diffusers_omni as omni
from tests import tiny

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared():
    pipe = omni.build_pipeline(tiny.vae())
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8))
    out = {encode: omni.prepare_i2v_latents(pipe, image, num_frames=17, height=64, width=96, seed=0, device=CPU,
                                            dtype=torch.float32, encode=encode) for encode in omni.ENCODES}
    return pipe, out


def test_the_single_frame_encode_keeps_diffusers_outputs_bitwise(prepared):
    _, out = prepared
    shipped, single = out[omni.SHIPPED], out[omni.SINGLE_FRAME]
    assert shipped.latents.shape == (1, 48, 5, 4, 6)
    assert shipped.condition_mask.flatten().tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert torch.equal(single.latents, shipped.latents)
    assert torch.equal(single.condition_mask, shipped.condition_mask)


def test_negative_control_an_off_by_one_latent_frame_is_caught(prepared):
    _, out = prepared
    wrong = out[omni.WRONG_FRAME]
    assert not torch.equal(wrong.latents[:, :, 0], out[omni.SHIPPED].latents[:, :, 0])
    assert torch.equal(wrong.latents[:, :, 1:], out[omni.SHIPPED].latents[:, :, 1:])  # the noise is the same


def test_the_patch_leaves_the_pipeline_as_shipped_afterwards(prepared):
    pipe, _ = prepared
    assert "_encode_video" not in vars(pipe)
    with pytest.raises(Exception, match="encode"), omni.encode_patch(pipe, "both"):
        pass


def test_the_local_tokenizer_knows_every_word_of_the_prompts(prepared):
    pipe, _ = prepared
    for frames in (81, 1):
        cond, uncond = pipe.tokenize_prompt(omni.PROMPT, num_frames=frames, height=720, width=1280)
        assert pipe.text_tokenizer.unk_token_id not in cond + uncond
        assert len(cond) > 100  # a prompt of a typical length, with its chat turns and templates
