"""Encode and decode through the Wan VAE, with the per-channel latent normalisation Cosmos3 uses."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan


def _latent_stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


@torch.no_grad()
def encode_latents(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] pixels in [-1, 1] -> normalised latents [1, z, (T-1)//4+1, H/16, W/16].

    `.mode()` of the latent distribution (the mean), as the I2V conditioning path does.
    """
    video = video.to(device=vae.device, dtype=vae.dtype)
    mode = vae.encode(video).latent_dist.mode()
    mean, std = _latent_stats(vae, mode)
    return (mode - mean) / std


@torch.no_grad()
def decode_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> pixels [1, 3, T, H, W] in [-1, 1] (clamped)."""
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    mean, std = _latent_stats(vae, latents)
    return vae.decode(latents * std + mean).sample.clamp_(-1.0, 1.0)
