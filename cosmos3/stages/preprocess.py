"""Cosmos3ImagePreprocessStage: the conditioning image as a [1,3,H,W] tensor in [-1, 1] at the request size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from cosmos3.errors import InputError
from cosmos3.request import Req, check_image_tensor
from cosmos3.stages.base import PipelineStage

# An 8K UHD frame. A request is at most request.MAX_SIDE_PX a side, so a bigger image only costs
# decode time and memory; PIL's own decompression-bomb limit (89 M pixels to warn) is looser.
MAX_IMAGE_PIXELS = 7680 * 4320
# A center crop that throws away more than this share of the resized image is rarely intended.
MAX_CROPPED_FRACTION = 0.5
UINT16_MAX = 65535
UINT8_MAX = 255
# Modes PIL converts to 8-bit RGB exactly: 1-bit as 0 / 255, gray, palette, colour spaces.
_PIL_RGB_MODES = frozenset({"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"})
# Modes with transparency: alpha-composited on black.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
# 16-bit integer modes (PNG and TIFF): the full 16-bit range maps to the 8-bit range.
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
SUPPORTED_MODES_TEXT = (
    "8-bit RGB, L, 1, P, CMYK, YCbCr, LAB, HSV; RGBA, LA, PA (composited on black); "
    "16-bit I;16 or 32-bit I with values in [0, 65535] (divided by 65535); float F with values in [0, 1]"
)


class CropWarning(UserWarning):
    """The request's aspect ratio crops away more than MAX_CROPPED_FRACTION of the conditioning image."""


def load_image(path: str | Path) -> PIL.Image.Image:
    """Open an image file as 8-bit RGB. Every bad file is an InputError naming `image`.

    The first frame of a multi-frame file is used, turned upright by its EXIF orientation.
    Transparent pixels (RGBA, LA, PA, a palette with transparency) are alpha-composited on
    black. 16-bit and float images are scaled from their full nominal range to 8 bits, never
    clipped: 16-bit integers (I;16, and 32-bit I holding values in [0, 65535]) are divided by
    65535; float (F) images must hold values in [0, 1] and are used as they are (no min-max
    stretch, which would change the image's brightness). Other values and modes are refused.
    """
    try:
        # Our size check below is stricter than PIL's bomb warning and names the field.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            img = PIL.Image.open(path)
    except PIL.Image.DecompressionBombError as exc:
        raise InputError(
            "image", f"must have at most {MAX_IMAGE_PIXELS:,} pixels (8K UHD); PIL refused it: {exc}", str(path)
        ) from exc
    except (OSError, PIL.UnidentifiedImageError, ValueError) as exc:
        raise InputError("image", f"must be a readable image file ({type(exc).__name__})", str(path)) from exc
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise InputError("image", f"must have a positive width and height (it is {width}x{height})", str(path))
        if width * height > MAX_IMAGE_PIXELS:
            raise InputError(
                "image", f"must have at most {MAX_IMAGE_PIXELS:,} pixels (8K UHD); it is {width}x{height}", str(path)
            )
        try:
            img.load()
            img = PIL.ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt pixel data
            raise InputError(
                "image", f"must be a complete, readable image file ({type(exc).__name__}: {exc})", str(path)
            ) from exc
        return to_rgb8(img, str(path))


def to_rgb8(img: PIL.Image.Image, source: str = "image") -> PIL.Image.Image:
    """Any supported PIL image as 8-bit RGB (the rules are in `load_image`)."""
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        mode, img = "RGBA", img.convert("RGBA")
    if mode in _PIL_RGB_MODES:
        return img.convert("RGB")
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        black = PIL.Image.new("RGBA", rgba.size, (0, 0, 0, UINT8_MAX))
        return PIL.Image.alpha_composite(black, rgba).convert("RGB")
    if mode in _UINT16_MODES or mode in ("I", "F"):
        return _gray_to_rgb8(np.asarray(img), mode, source)
    raise InputError("image", f"mode {mode!r} is not supported; use {SUPPORTED_MODES_TEXT}", source)


def _gray_to_rgb8(values: np.ndarray, mode: str, source: str) -> PIL.Image.Image:
    """A 16-bit, 32-bit or float gray image scaled by its value range (see `load_image`), as RGB."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError("image", f"a {mode} image must not contain NaN or Inf", source)
    lo, hi = float(values.min()), float(values.max())
    if mode == "F":
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                "image", f"a float (F) image must hold values in [0, 1]; this one spans [{lo:g}, {hi:g}]", source
            )
        unit = values
    else:
        if lo < 0 or hi > UINT16_MAX:
            raise InputError(
                "image",
                f"a 32-bit integer (I) image must hold 16-bit values in [0, {UINT16_MAX}]; "
                f"this one spans [{lo:g}, {hi:g}]",
                source,
            )
        unit = values / UINT16_MAX
    gray = np.round(unit * UINT8_MAX).astype(np.uint8)
    return PIL.Image.fromarray(gray, mode="L").convert("RGB")


def cover_scale_size(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int]:
    """The smallest size with the source aspect ratio that covers (dst_w, dst_h)."""
    scale = max(dst_w / src_w, dst_h / src_h)
    return max(dst_w, round(src_w * scale)), max(dst_h, round(src_h * scale))


def warn_if_cropped_heavily(src_w: int, src_h: int, dst_w: int, dst_h: int) -> None:
    """CropWarning when the cover-resize-and-crop keeps less than 1 - MAX_CROPPED_FRACTION of the image."""
    new_w, new_h = cover_scale_size(src_w, src_h, dst_w, dst_h)
    kept = (dst_w * dst_h) / (new_w * new_h)
    if 1.0 - kept > MAX_CROPPED_FRACTION:
        warnings.warn(
            f"image: the center crop to {dst_w}x{dst_h} keeps only {kept:.0%} of the {src_w}x{src_h} image "
            f"(aspect ratio {src_w / src_h:.2f} vs {dst_w / dst_h:.2f}); choose a width and height closer "
            "to the image's aspect ratio to keep more of it",
            CropWarning,
            stacklevel=3,
        )


def resize_cover_crop(img: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Resize preserving aspect ratio (Lanczos) so the image covers width x height, then center-crop.

    Done in one step: only the source region that survives the crop is resampled (PIL's `box`),
    which gives the same pixels (within one level) without building the covering image, whose
    size is unbounded for an extreme aspect ratio.
    """
    if img.size == (width, height):
        return img
    warn_if_cropped_heavily(img.width, img.height, width, height)
    new_w, new_h = cover_scale_size(img.width, img.height, width, height)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    scale_x, scale_y = img.width / new_w, img.height / new_h
    box = (left * scale_x, top * scale_y, (left + width) * scale_x, (top + height) * scale_y)
    return img.resize((width, height), PIL.Image.Resampling.LANCZOS, box=box)


def load_and_fit(path: str | Path, width: int, height: int) -> PIL.Image.Image:
    """The conditioning image file as 8-bit RGB at width x height: what the stage feeds the VAE."""
    return resize_cover_crop(load_image(path), width, height)


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
            req.image_pixels = pil_to_tensor(load_and_fit(req.image, req.width, req.height))
        return req

    @staticmethod
    def _resize_tensor(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
        src_h, src_w = image.shape[-2:]
        if (src_w, src_h) == (width, height):
            return image
        warn_if_cropped_heavily(src_w, src_h, width, height)
        new_w, new_h = cover_scale_size(src_w, src_h, width, height)
        resized = torch.nn.functional.interpolate(
            image.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        ).clamp_(-1.0, 1.0)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return resized[..., top : top + height, left : left + width].to(image.dtype)
