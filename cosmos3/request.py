"""The request record that flows through the stages (upstream's `Req`), with typed stage outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from diffusers import UniPCMultistepScheduler

from cosmos3.errors import InputError

OutputKind = Literal["video", "image"]

SPATIAL_MULTIPLE = 16  # the VAE's 16x spatial compression
TEMPORAL_STRIDE = 4  # the VAE's 4x temporal compression: valid num_frames are 4k + 1

# Upper bounds, far above any Cosmos3 / Wan 2.2 setting (1280x720, 121 frames) and far below what
# breaks: a mistyped size (an extra digit) fails here in microseconds, not after minutes of model
# building as an out-of-memory error or as a shape error in the DiT's rotary embedding, which has
# 1024 positions per axis (latent frames, and height or width / 32).
MAX_SIDE_PX = 4096  # DCI 4K; a latent side of at most 256
MAX_NUM_FRAMES = 1201  # 50 s at 24 fps: 301 latent frames
# The whole video, height * width * num_frames: twice a 10 s 720p clip (2 x 1280 x 720 x 121 px).
# Memory and time grow with it (the decoded uint8 video alone is 3 bytes a pixel).
MAX_VIDEO_PIXELS = 2 * 1280 * 720 * 121
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed


def is_int(value: object) -> bool:
    """An integer as a request means one: bool is an int in Python, never in a request."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_image_tensor(image: object, field: str = "image", *, values: bool = True) -> None:
    """A conditioning image tensor must be [1, 3, H, W] with H, W >= 1, floating point, finite and within [-1, 1].

    `values=False` checks the metadata alone (type, shape, dtype): free, where reading the values costs a pass
    over the image and two host-device syncs. Req.validate runs before every stage, so it checks the metadata;
    the values are checked once, by the stage that reads the pixels (preprocess, latent preparation).
    """
    if not isinstance(image, torch.Tensor):
        raise InputError(field, "must be a torch.Tensor", type(image).__name__)
    if image.dim() != 4 or image.shape[0] != 1:
        raise InputError(field, "must have shape [1, 3, H, W] (rank 4, batch 1)", tuple(image.shape))
    if image.shape[1] != 3:
        raise InputError(field, "must have 3 channels (RGB) in dimension 1", tuple(image.shape))
    if image.shape[2] < 1 or image.shape[3] < 1:
        raise InputError(field, "must not be empty: H and W must be >= 1", tuple(image.shape))
    if not image.is_floating_point():
        raise InputError(field, "must be a floating-point tensor", str(image.dtype))
    if not values:
        return
    if not torch.isfinite(image).all():
        raise InputError(field, "must not contain NaN or Inf")
    lo, hi = image.min().item(), image.max().item()
    if lo < -1.0 or hi > 1.0:
        raise InputError(field, "values must lie in [-1, 1]", (lo, hi))


def latent_frames(num_frames: int) -> int:
    """Latent frames for `num_frames` pixel frames: frame 0 alone, then one per 4 frames."""
    return (num_frames - 1) // TEMPORAL_STRIDE + 1


def check_num_frames(num_frames: int) -> None:
    """Reject frame counts the causal VAE cannot encode exactly (we do not round down silently)."""
    if not is_int(num_frames) or num_frames < 1:
        raise InputError("num_frames", "must be an integer >= 1 (1 means a single image)", num_frames)
    if num_frames > MAX_NUM_FRAMES:
        raise InputError("num_frames", f"must be at most {MAX_NUM_FRAMES}", num_frames)
    if (num_frames - 1) % TEMPORAL_STRIDE:
        lower = num_frames - (num_frames - 1) % TEMPORAL_STRIDE
        raise InputError(
            "num_frames",
            f"must satisfy (num_frames - 1) % {TEMPORAL_STRIDE} == 0; nearest valid values are "
            f"{lower} and {lower + TEMPORAL_STRIDE}",
            num_frames,
        )


def check_spatial(name: str, value: int) -> None:
    """Height and width must be positive multiples of the VAE's spatial compression, at most MAX_SIDE_PX."""
    if not is_int(value) or value <= 0 or value % SPATIAL_MULTIPLE:
        raise InputError(name, f"must be a positive multiple of {SPATIAL_MULTIPLE}", value)
    if value > MAX_SIDE_PX:
        raise InputError(name, f"must be at most {MAX_SIDE_PX} pixels", value)


def check_video_size(height: int, width: int, num_frames: int) -> None:
    """The whole video, height * width * num_frames, must stay within MAX_VIDEO_PIXELS."""
    if height * width * num_frames > MAX_VIDEO_PIXELS:
        most = (MAX_VIDEO_PIXELS // (height * width) - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1
        raise InputError(
            "num_frames",
            f"height * width * num_frames must be at most {MAX_VIDEO_PIXELS:,} pixels (2 x 1280x720 x 121 frames), "
            f"so at most {most} frames at {width}x{height}",
            num_frames,
        )


@dataclass
class Req:
    """One generation request. Inputs first; the stages fill in the outputs below them.

    I2V is "a conditioning image is present and the output is a video"; T2I is
    `num_frames == 1` with `output_kind == "image"`.
    """

    height: int = 720
    width: int = 1280
    num_frames: int = 81
    fps: int = 24
    seed: int = 0
    image: str | Path | torch.Tensor | None = None  # a file path, or a [1,3,H,W] tensor in [-1, 1]
    output_kind: OutputKind = "video"
    num_inference_steps: int = 35
    guidance_scale: float = 4.0
    profile: bool = False
    is_warmup: bool = False

    # Filled by Cosmos3ImagePreprocessStage.
    image_pixels: torch.Tensor | None = None  # [1, 3, H, W] in [-1, 1]
    # Filled by Cosmos3LatentPreparationStage.
    latents: torch.Tensor | None = None  # [1, 48, T_lat, H/16, W/16]
    image_latent: torch.Tensor | None = None  # [1, 48, 1, H/16, W/16]; I2V only
    velocity_mask: torch.Tensor | None = None  # broadcastable to latents; I2V only
    # Filled by Cosmos3TimestepPreparationStage; the scheduler's state belongs to this request.
    scheduler: UniPCMultistepScheduler | None = field(default=None, repr=False)
    timesteps: torch.Tensor | None = None
    # Filled by Cosmos3DecodingStage.
    frames: torch.Tensor | None = None  # uint8 [num_frames, H, W, 3]
    # Bookkeeping the pipeline and the profiler read.
    denoise_steps_done: int = field(default=0, repr=False)

    @property
    def is_i2v(self) -> bool:
        return self.image is not None and self.output_kind == "video"

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        return (
            1,
            48,
            latent_frames(self.num_frames),
            self.height // SPATIAL_MULTIPLE,
            self.width // SPATIAL_MULTIPLE,
        )

    def validate(self) -> None:
        """Check every input field; raise InputError naming the first one that breaks its rule."""
        check_spatial("height", self.height)
        check_spatial("width", self.width)
        check_num_frames(self.num_frames)
        check_video_size(self.height, self.width, self.num_frames)
        if not isinstance(self.output_kind, str) or self.output_kind not in ("video", "image"):
            raise InputError("output_kind", "must be 'video' or 'image'", self.output_kind)
        if self.output_kind == "image" and self.num_frames != 1:
            raise InputError("num_frames", "must be 1 when output_kind is 'image' (T2I)", self.num_frames)
        if self.output_kind == "image" and self.image is not None:
            raise InputError("image", "a conditioning image needs output_kind 'video' (I2V); T2I takes none")
        if self.image is not None and not isinstance(self.image, (str, Path, torch.Tensor)):
            raise InputError("image", "must be a file path, a tensor or None", type(self.image).__name__)
        if isinstance(self.image, torch.Tensor):
            check_image_tensor(self.image, values=False)  # the values: by the stage that reads them
        elif isinstance(self.image, str) and not self.image:
            raise InputError("image", "must be a non-empty file path", self.image)
        if not is_int(self.fps) or self.fps < 1:
            raise InputError("fps", "must be an integer >= 1", self.fps)
        if not is_int(self.num_inference_steps) or self.num_inference_steps < 1:
            raise InputError("num_inference_steps", "must be an integer >= 1", self.num_inference_steps)
        scale = self.guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise InputError("guidance_scale", "must be a finite number >= 0", self.guidance_scale)
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise InputError("seed", "must be an integer >= 0 and <= 2**64 - 1 (a 64-bit generator seed)", self.seed)
        for name in ("profile", "is_warmup"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(name, "must be True or False", getattr(self, name))
