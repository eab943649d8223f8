"""Cosmos3DecodingStage: de-normalise the final latents, VAE-decode them, output uint8 frames."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from cosmos3.errors import InputError
from cosmos3.request import Req
from cosmos3.stages.base import PipelineStage
from cosmos3.vae import decode_latents


def to_uint8_frames(pixels: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    frames = ((pixels[0].float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return frames.permute(1, 2, 3, 0).contiguous()


class Cosmos3DecodingStage(PipelineStage):
    name = "decoding"

    def __init__(self, vae: AutoencoderKLWan) -> None:
        self.vae = vae

    def check_inputs(self, req: Req) -> None:
        super().check_inputs(req)
        if req.latents is None:
            raise InputError("latents", "must be set by the earlier stages before decoding")

    def forward(self, req: Req) -> Req:
        req.frames = to_uint8_frames(decode_latents(self.vae, req.latents))
        return req
