"""What Cosmos3OmniTransformer reads for one request, built by diffusers' Cosmos3OmniPipeline's own methods.

The transformer takes one joint sequence per guidance pass: the prompt's token ids (the understanding
pathway, a causal prefix), then the patchified video latents (the generation pathway), with 3D mRoPE
position ids for both, per-patch timesteps for the noisy latent frames, and the indexes that place
each part in the sequence and read the predictions back. diffusers builds these in
`Cosmos3OmniPipeline.tokenize_prompt`, `_prepare_text_segment` and `_prepare_vision_segment`
(pipelines/cosmos/pipeline_cosmos3_omni.py); this module calls those methods and joins their parts as
the pipeline's `__call__` does, so the token layout is diffusers', never re-derived here.

The prompt is fixed (`diffusers_omni.PROMPT`, about 80 words, with the pipeline's system prompt and its
duration and resolution templates; the negative prompt is the pipeline's default, empty, with its inverse
templates) and tokenized once by the local word-level tokenizer: latency depends on the number of
tokens, not on which they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cosmos3 import diffusers_omni
from cosmos3.errors import InputError

FPS = 24.0  # the pipeline's default frame rate: its duration template and the mRoPE's fps modulation
# The request shape the fixed prompt is tokenized for (its templates name a duration and a resolution).
PROMPT_SHAPE = {"num_frames": 81, "height": 720, "width": 1280}


@dataclass(frozen=True)
class PromptIds:
    """Token ids of the conditional prompt and of the negative (unconditional) one."""

    cond: tuple[int, ...]
    uncond: tuple[int, ...]


def prompt_ids(omni: Any, *, num_frames: int = PROMPT_SHAPE["num_frames"], height: int = PROMPT_SHAPE["height"],
               width: int = PROMPT_SHAPE["width"]) -> PromptIds:
    """The fixed prompt tokenized by `omni` (a Cosmos3OmniPipeline) as its `__call__` would for this shape."""
    cond, uncond = omni.tokenize_prompt(diffusers_omni.PROMPT, negative_prompt=None, num_frames=num_frames,
                                        height=height, width=width, fps=FPS)
    vocab = omni.transformer.config.vocab_size if omni.transformer is not None else None
    largest = max([*cond, *uncond])
    if vocab is not None and largest >= vocab:
        raise InputError("vocab_size", f"must exceed the prompt's largest token id {largest}", vocab)
    return PromptIds(tuple(cond), tuple(uncond))


def packed_pass(omni: Any, ids: tuple[int, ...], latents: torch.Tensor, *, image_condition: bool,
                device: torch.device) -> dict[str, Any]:
    """The transformer's keyword arguments for one guidance pass, less the two that change every step
    (vision_tokens, vision_timesteps): diffusers' text and vision segments, joined as `__call__` joins them."""
    text = omni._prepare_text_segment(list(ids), device=device)
    vision = omni._prepare_vision_segment(
        input_vision_tokens=latents, has_image_condition=image_condition,
        mrope_offset=text["vision_start_temporal_offset"], vision_fps=FPS, curr=text["und_len"], device=device,
        condition_frame_indexes=[0] if image_condition else [])
    return {
        "input_ids": text["input_ids"],
        "text_indexes": text["text_indexes"],
        "und_len": text["und_len"],
        "position_ids": torch.cat([text["text_mrope_ids"], vision["vision_mrope_ids"]], dim=1),
        "sequence_length": text["und_len"] + vision["num_vision_tokens"],
        "vision_token_shapes": vision["vision_token_shapes"],
        "vision_sequence_indexes": vision["vision_sequence_indexes"],
        "vision_mse_loss_indexes": vision["vision_mse_loss_indexes"],
        "vision_noisy_frame_indexes": vision["vision_noisy_frame_indexes"],
    }


def noisy_tokens(packed: dict[str, Any]) -> int:
    """How many vision tokens of this pass are noisy (each gets the step's timestep)."""
    return len(packed["vision_mse_loss_indexes"])
