"""Cosmos3ImagePreprocessStage: the conditioning image as a [1,3,H,W] tensor in [-1, 1] at the request size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch

from cosmos3.errors import InputError
from cosmos3.request import Req
from cosmos3.stages.base import PipelineStage


def check_image_tensor(image: torch.Tensor, field: str = "image") -> None:
    """A conditioning image tensor must be [1, 3, H, W], floating point, finite and within [-1, 1]."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise InputError(field, "must have shape [1, 3, H, W] (rank 4, batch 1)", tuple(image.shape))
    if image.shape[1] != 3:
        raise InputError(field, "must have 3 channels (RGB) in dimension 1", tuple(image.shape))
    if not image.is_floating_point():
        raise InputError(field, "must be a floating-point tensor", str(image.dtype))
    if not torch.isfinite(image).all():
        raise InputError(field, "must not contain NaN or Inf")
    lo, hi = image.min().item(), image.max().item()
    if lo < -1.0 or hi > 1.0:
        raise InputError(field, "values must lie in [-1, 1]", (lo, hi))


def load_image(path: str | Path) -> PIL.Image.Image:
    """Open an image file as RGB; an unreadable file is an InputError naming the path."""
    try:
        with PIL.Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, PIL.UnidentifiedImageError, ValueError) as exc:
        raise InputError("image", f"must be a readable image file ({type(exc).__name__})", str(path)) from exc


def cover_scale_size(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int]:
    """The smallest size with the source aspect ratio that covers (dst_w, dst_h)."""
    scale = max(dst_w / src_w, dst_h / src_h)
    return max(dst_w, round(src_w * scale)), max(dst_h, round(src_h * scale))


def resize_cover_crop(img: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Resize preserving aspect ratio (Lanczos) so the image covers width x height, then center-crop."""
    new_w, new_h = cover_scale_size(img.width, img.height, width, height)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), PIL.Image.Resampling.LANCZOS)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return img.crop((left, top, left + width, top + height))


def pil_to_tensor(img: PIL.Image.Image) -> torch.Tensor:
    """uint8 HWC RGB -> float32 [1, 3, H, W] in [-1, 1]."""
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


class Cosmos3ImagePreprocessStage(PipelineStage):
    """Load (file) or check (tensor) the conditioning image and bring it to the request's size.

    A tensor of another size goes through the same resize-cover-crop, with bicubic
    antialiased interpolation in place of Lanczos. No image: the stage is a no-op.
    """

    name = "preprocess"

    def check_inputs(self, req: Req) -> None:
        super().check_inputs(req)
        if isinstance(req.image, torch.Tensor):
            check_image_tensor(req.image)
        elif req.image is not None and not isinstance(req.image, (str, Path)):
            raise InputError("image", "must be a file path, a tensor or None", type(req.image).__name__)

    def forward(self, req: Req) -> Req:
        if req.image is None:
            return req
        if isinstance(req.image, torch.Tensor):
            req.image_pixels = self._resize_tensor(req.image, req.width, req.height)
        else:
            req.image_pixels = pil_to_tensor(resize_cover_crop(load_image(req.image), req.width, req.height))
        return req

    @staticmethod
    def _resize_tensor(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
        src_h, src_w = image.shape[-2:]
        if (src_w, src_h) == (width, height):
            return image
        new_w, new_h = cover_scale_size(src_w, src_h, width, height)
        resized = torch.nn.functional.interpolate(
            image.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        ).clamp_(-1.0, 1.0)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return resized[..., top : top + height, left : left + width].to(image.dtype)
