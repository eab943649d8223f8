"""Cosmos3LatentPreparationStage: seeded noise, and for I2V the encoded conditioning image in latent frame 0."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from diffusers import AutoencoderKLWan

from cosmos3.errors import InputError
from cosmos3.first_frame import FirstFrameEncoder
from cosmos3.request import Req
from cosmos3.stages.base import PipelineStage
from cosmos3.stages.preprocess import check_image_tensor
from cosmos3.vae import encode_latents

EncodeStrategy = Literal["single_frame", "expand", "first_frame_2d"]
ENCODE_STRATEGIES: tuple[str, ...] = get_args(EncodeStrategy)


def check_strategy(strategy: str) -> None:
    if strategy not in ENCODE_STRATEGIES:
        raise InputError("encode_strategy", f"must be one of {list(ENCODE_STRATEGIES)}", strategy)


def encode_input(pixels: torch.Tensor, num_frames: int, strategy: EncodeStrategy) -> torch.Tensor:
    """The pixel video handed to the VAE: the only thing the two strategies do differently.

    "expand" is the old upstream path: the image repeated to num_frames frames and materialised,
    though only latent frame 0 is used (the stage builds it where the image is, on the host, as
    upstream did; see Cosmos3LatentPreparationStage.encode_condition). "single_frame" encodes the
    image as a one-frame video;
    the encoder is temporally causal, so latent frame 0 is the same. "first_frame_2d" takes the same
    one frame and encodes it with 2D convs (cosmos3.first_frame).
    """
    video = pixels.unsqueeze(2)
    if strategy == "expand":
        video = video.expand(-1, -1, num_frames, -1, -1).contiguous()
    return video


def condition_mask(latent_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, T_lat, 1, 1]: 1 on latent frame 0 (the conditioning frame), 0 elsewhere."""
    mask = torch.zeros((1, 1, latent_shape[2], 1, 1), device=device, dtype=dtype)
    mask[:, :, 0] = 1
    return mask


class Cosmos3LatentPreparationStage(PipelineStage):
    """Initial latents for T2V / T2I (pure noise) and I2V (image latent in frame 0, noise elsewhere)."""

    name = "latent_preparation"

    def __init__(
        self,
        vae: AutoencoderKLWan,
        *,
        encode_strategy: EncodeStrategy = "single_frame",
        dtype: torch.dtype = torch.bfloat16,
        first_frame: FirstFrameEncoder | None = None,
    ) -> None:
        """`first_frame`: the first_frame_2d encoder with its options (mode, compile mode); an eager one
        on `vae` when not given. Building it checks that the VAE's encoder is the structure it maps."""
        check_strategy(encode_strategy)
        self.vae = vae
        self.encode_strategy = encode_strategy
        self.dtype = dtype
        if first_frame is not None and encode_strategy != "first_frame_2d":
            raise InputError("first_frame", "is only used by encode_strategy 'first_frame_2d'", encode_strategy)
        if first_frame is not None and first_frame.vae is not vae:
            raise InputError("first_frame", "must encode with the stage's VAE")
        if encode_strategy == "first_frame_2d" and first_frame is None:
            first_frame = FirstFrameEncoder(vae)
        self.first_frame = first_frame

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def check_inputs(self, req: Req) -> None:
        super().check_inputs(req)
        if not req.is_i2v:
            return
        if req.image_pixels is None:
            raise InputError("image_pixels", "must be set by Cosmos3ImagePreprocessStage before latent preparation")
        check_image_tensor(req.image_pixels, "image_pixels")
        if tuple(req.image_pixels.shape[-2:]) != (req.height, req.width):
            raise InputError(
                "image_pixels", f"must be {req.height}x{req.width} (height x width)", tuple(req.image_pixels.shape)
            )

    def noise(self, req: Req) -> torch.Tensor:
        generator = torch.Generator(self.device).manual_seed(req.seed)
        return torch.randn(req.latent_shape, generator=generator, device=self.device, dtype=self.dtype)

    def encode_condition(self, req: Req) -> torch.Tensor:
        """Normalised latents of the conditioning input; frame 0 is the image latent.

        "expand" is upstream's old code as it ran: `preprocessed_image.unsqueeze(2).expand(-1, -1, num_frames,
        -1, -1).contiguous().to(device=device, dtype=vae_dtype)`, the image (preprocessed on the host) repeated
        into a float32 video in host memory, then one copy of all of it to the device in the VAE's dtype
        (0.9 GB of float32 at 1280x720, 81 frames). The one-frame strategies copy the image alone."""
        if self.encode_strategy == "expand":
            video = encode_input(req.image_pixels, req.num_frames, "expand").to(device=self.device,
                                                                                dtype=self.vae.dtype)
            return encode_latents(self.vae, video).to(self.dtype)
        video = encode_input(req.image_pixels.to(self.device), req.num_frames, self.encode_strategy)
        if self.encode_strategy == "first_frame_2d":
            return self.first_frame(video[:, :, 0]).to(self.dtype)
        return encode_latents(self.vae, video).to(self.dtype)

    def forward(self, req: Req) -> Req:
        noise = self.noise(req)
        if not req.is_i2v:
            req.latents = noise
            return req
        image_latent = self.encode_condition(req)[:, :, :1]
        mask = condition_mask(req.latent_shape, self.device, self.dtype)
        # image_latent broadcasts over time; the mask keeps it in frame 0 only.
        req.latents = mask * image_latent + (1 - mask) * noise
        req.image_latent = image_latent
        req.velocity_mask = 1 - mask
        return req
