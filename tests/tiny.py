"""Cached tiny-preset components and inputs shared by the CPU tests (built once per process)."""

from __future__ import annotations

import functools

import torch
from diffusers import AutoencoderKLWan

from cosmos3.components import Components, build_components
from cosmos3.presets import get_preset
from cosmos3.request import Req

DEVICE = torch.device("cpu")
PRESET = get_preset("tiny")


@functools.cache
def components() -> Components:
    return build_components(PRESET, DEVICE)


def vae() -> AutoencoderKLWan:
    return components().vae


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A seeded random conditioning image [1, 3, H, W] in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=generator) * 2 - 1


def i2v_request(height: int = 64, width: int = 96, num_frames: int = 9, **kwargs) -> Req:
    """An I2V request whose image is already preprocessed (image_pixels set)."""
    pixels = image(height, width)
    return Req(height=height, width=width, num_frames=num_frames, image=pixels, image_pixels=pixels, **kwargs)


class LookAheadWanVAE(AutoencoderKLWan):
    """Negative control: a Wan VAE that is NOT temporally causal.

    Every latent frame is averaged with the next one, as a bidirectional temporal layer
    would, so latent frame 0 depends on later pixel frames.
    """

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        moments = super()._encode(x)
        if moments.shape[2] > 1:
            nxt = torch.cat([moments[:, :, 1:], moments[:, :, -1:]], dim=2)
            moments = 0.5 * (moments + nxt)
        return moments


@functools.cache
def look_ahead_vae() -> LookAheadWanVAE:
    model = LookAheadWanVAE.from_config(vae().config)
    model.load_state_dict(vae().state_dict())
    return model.eval().requires_grad_(False)
