"""This package's I2V preparation against diffusers' Cosmos3OmniPipeline on the same image, size and seed.

Two comparisons (issue 24), each with its cause or its tolerance:

- **Preprocessing**: our Cosmos3ImagePreprocessStage (PIL Lanczos over the region the centre crop keeps, the
  covering size rounded) against diffusers' `_preprocess_conditioning_image` (torch bilinear with antialias
  over the whole image, the covering size rounded up, then the crop), called as it ships. Three sources
  separate the causes: one at the output size (nothing resized: any difference is the value mapping), one at
  5/4 of it (the e2e benchmarks' image; both cover sizes are exact, so only the filter differs), and one
  where rounding and rounding up give different cover sizes (the filter and the geometry). The size
  diffusers resizes to is read from its own call of `torch.nn.functional.interpolate`, not re-derived.
- **Latents**: our latent-preparation stage (single_frame) against diffusers' `prepare_latents` (as shipped)
  on the same pixels and seed: latent frame 0 within this package's tolerance (one bf16 ulp, normwise), the
  noise of the other frames, and the condition mask.

Nothing of diffusers is copied or edited: its functions are called, and one torch function is observed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from bench.core.fmt import DASH, DIFFUSERS_HEADING, table

LEVELS = 127.5  # [-1, 1] <-> 8-bit levels, in both implementations
OURS_RESIZE = "PIL Lanczos over the crop box; cover size rounded; crop offset floor((resized - out) / 2)"
DIFFUSERS_RESIZE = "torch bilinear, antialias, the whole image; cover size rounded up; then the centre crop"


@dataclass(frozen=True)
class PreprocessCheck:
    """One source image through both preprocessings, compared in 8-bit levels."""

    source: str  # which of the three sources
    source_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    ours_cover: tuple[int, int] | None  # the size ours resamples to before the crop; None: not resized
    diffusers_cover: tuple[int, int]  # the size diffusers interpolates to (observed)
    max_abs_levels: float  # largest |ours - diffusers| in 8-bit levels
    mean_abs_levels: float
    differing_share: float  # share of values that differ at all
    cause: str


@dataclass(frozen=True)
class LatentCheck:
    """Our prepared latents against diffusers' on the same pixels and seed."""

    output_size: tuple[int, int]
    num_frames: int
    ours_dtype: str
    diffusers_dtype: str
    frame0_bitwise: bool
    frame0_max_abs_err: float
    frame0_max_rel_err: float  # normwise: max|ours - diffusers| / max|diffusers|
    rtol: float
    frame0_within_tolerance: bool
    noise_bitwise: bool  # latent frames 1.. (the seeded noise)
    noise_max_abs_err: float
    condition_mask_equal: bool
    note: str


@dataclass(frozen=True)
class CrossCheck:
    preset: str
    device: str
    preprocessing: tuple[PreprocessCheck, ...]
    latents: tuple[LatentCheck, ...]


@contextlib.contextmanager
def observed_interpolate(sizes: list[tuple[int, int]]) -> Iterator[None]:
    """torch.nn.functional.interpolate as it is, each call's `size` (height, width) appended to `sizes`."""
    functional = torch.nn.functional
    shipped = functional.interpolate

    def observed(*args: Any, **kwargs: Any) -> torch.Tensor:
        size = kwargs.get("size", args[1] if len(args) > 1 else None)
        sizes.append(tuple(int(s) for s in size))
        return shipped(*args, **kwargs)

    functional.interpolate = observed
    try:
        yield
    finally:
        functional.interpolate = shipped


def diffusers_preprocess(image: PIL.Image.Image, width: int, height: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """diffusers' own `_preprocess_conditioning_image`, and the (width, height) it resized to."""
    from diffusers.pipelines.cosmos.pipeline_cosmos3_omni import _preprocess_conditioning_image

    sizes: list[tuple[int, int]] = []
    with observed_interpolate(sizes):
        pixels = _preprocess_conditioning_image(image, height=height, width=width)
    (resized_h, resized_w), = sizes
    return pixels, (resized_w, resized_h)


def ours_preprocess(path: Path, width: int, height: int) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """Our preprocess stage on the file, and the cover size it resamples to (None where it passes through)."""
    from cosmos3.request import Req
    from cosmos3.stages import Cosmos3ImagePreprocessStage
    from cosmos3.stages.preprocess import cover_scale_size

    req = Cosmos3ImagePreprocessStage()(Req(height=height, width=width, num_frames=1, image=path))
    with PIL.Image.open(path) as img:
        size = img.size
    return req.image_pixels, None if size == (width, height) else cover_scale_size(*size, width, height)


def rounding_source(width: int, height: int) -> tuple[int, int]:
    """A source size near 5/4 of the output whose cover size differs between the two implementations (ours
    rounds it; diffusers' size is observed from its own call, on a blank picture of that size)."""
    from cosmos3.stages.preprocess import cover_scale_size

    for extra in range(1, 64):
        for source in ((width * 5 // 4 + extra, height * 5 // 4), (width * 5 // 4, height * 5 // 4 + extra)):
            _, theirs = diffusers_preprocess(PIL.Image.new("RGB", source), width, height)
            if cover_scale_size(*source, width, height) != theirs:
                return source
    raise ValueError(f"no source near 5/4 of {width}x{height} whose cover size differs between the two")


def seeded_photo(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """A seeded random 8-bit RGB picture: noise, the hardest case for two resampling filters to agree on."""
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def smooth_photo(width: int, height: int) -> PIL.Image.Image:
    """bench.measure.harness.smooth_image (a colour gradient and soft blobs) in 8 bits: what a photograph is closer to."""
    from bench.measure.harness import smooth_image

    pixels = smooth_image(width, height)[0].permute(1, 2, 0)
    return PIL.Image.fromarray(((pixels + 1) * LEVELS).round().clamp(0, 255).to(torch.uint8).numpy())


def compare_preprocessing(scratch: Path, width: int, height: int) -> list[PreprocessCheck]:
    """Random pictures (noise: the worst case for two filters), and one smooth picture at 5/4."""
    five_fourths = (width * 5 // 4, height * 5 // 4)
    sources = {
        "at the output size": (width, height, seeded_photo),
        "5/4 of the output (the e2e image)": (*five_fourths, seeded_photo),
        "cover size rounds two ways": (*rounding_source(width, height), seeded_photo),
        "5/4 of the output, a smooth picture": (*five_fourths, smooth_photo),
    }
    out = []
    for name, (*size, picture) in sources.items():
        path = scratch / f"crosscheck-{picture.__name__}-{size[0]}x{size[1]}.png"
        picture(*size).save(path)
        ours, ours_cover = ours_preprocess(path, width, height)
        with PIL.Image.open(path) as img:
            theirs, their_cover = diffusers_preprocess(img, width, height)
        diff = (ours.float() - theirs.float()).abs() * LEVELS
        max_abs = round(float(diff.max()), 3)  # whole levels, less the float error of the [-1, 1] scaling
        if max_abs == 0:
            cause = "none: no resize, the same 8-bit values and the same mapping to [-1, 1]"
        elif ours_cover is None or ours_cover == their_cover:
            cause = ("the filter alone (the geometry agrees): Lanczos over the crop box (ours) against antialiased "
                     "bilinear over the whole image (diffusers)")
        else:
            cause = (f"the filter, and the geometry: ours rounds the cover size to {ours_cover[0]}x{ours_cover[1]}, "
                     f"diffusers rounds it up to {their_cover[0]}x{their_cover[1]}, so the scale and the crop move")
        out.append(PreprocessCheck(name, tuple(size), (width, height), ours_cover, their_cover, max_abs,
                                   float(diff.mean()), float((diff > 0).float().mean()), cause))
    return out


def compare_latents(vae: Any, pipe: Any, width: int, height: int, num_frames: int, dtype: torch.dtype,
                    device: torch.device) -> LatentCheck:
    """Both implementations on the same 8-bit image at the output size (so both preprocessings pass it through:
    the first preprocessing check shows they agree there), seed 0."""
    from cosmos3 import diffusers_omni
    from cosmos3.equivalence import DEFAULT_RTOL, max_errors
    from cosmos3.request import Req
    from cosmos3.stages import Cosmos3LatentPreparationStage
    from cosmos3.stages.preprocess import pil_to_tensor

    image = seeded_photo(width, height, seed=1)
    pixels = pil_to_tensor(image)
    stage = Cosmos3LatentPreparationStage(vae, encode_strategy="single_frame", dtype=dtype)
    with torch.no_grad():
        ours = stage(Req(height=height, width=width, num_frames=num_frames, image=pixels, image_pixels=pixels))
    sampling = torch.float32  # what Cosmos3OmniPipeline.__call__ hands prepare_latents
    theirs = diffusers_omni.prepare_i2v_latents(pipe, image, num_frames=num_frames, height=height, width=width,
                                                seed=0, device=device, dtype=sampling)
    a, b = ours.latents.float(), theirs.latents.float()
    frame0 = max_errors(a[:, :, 0], b[:, :, 0])
    noise = max_errors(a[:, :, 1:], b[:, :, 1:])
    mask_equal = bool(torch.equal((1 - ours.velocity_mask).flatten().float(), theirs.condition_mask.flatten().float()))
    note = ("the same generator and seed draw the same noise in the same dtype" if dtype == sampling else
            f"the noise is drawn in {str(dtype).removeprefix('torch.')} here and in float32 by diffusers, so it "
            "differs by design; latent frame 0 is what conditions the request")
    return LatentCheck((width, height), num_frames, str(dtype).removeprefix("torch."), "float32",
                       bool(torch.equal(a[:, :, 0], b[:, :, 0])), frame0.max_abs, frame0.max_rel, DEFAULT_RTOL,
                       frame0.max_abs <= DEFAULT_RTOL * frame0.scale, noise.max_abs == 0, noise.max_abs, mask_equal,
                       note)


def crosscheck(preset_name: str, sizes: list[tuple[int, int]], num_frames: int, device: torch.device,
               scratch: Path) -> CrossCheck:
    from cosmos3 import diffusers_omni
    from cosmos3.components import build_vae
    from cosmos3.presets import get_preset

    preset = get_preset(preset_name)
    vae = build_vae(preset, device)
    pipe = diffusers_omni.build_pipeline(vae)
    pre = [check for (w, h) in sizes for check in compare_preprocessing(scratch, w, h)]
    lat = [compare_latents(vae, pipe, w, h, num_frames, preset.dtype, device) for (w, h) in sizes]
    return CrossCheck(preset_name, str(device), tuple(pre), tuple(lat))


def _size(size: tuple[int, int] | None) -> str:
    return DASH if size is None else f"{size[0]}x{size[1]}"


def markdown(check: CrossCheck) -> str:
    pre_rows = [[_size(p.output_size), p.source, _size(p.source_size), _size(p.ours_cover), _size(p.diffusers_cover),
                 f"{p.max_abs_levels:g}", f"{p.mean_abs_levels:.2f}", f"{p.differing_share:.1%}", p.cause]
                for p in check.preprocessing]
    lat_rows = [[_size(c.output_size), str(c.num_frames), f"{c.ours_dtype} / {c.diffusers_dtype}",
                 "bitwise" if c.frame0_bitwise else f"{c.frame0_max_abs_err:.3g} / {c.frame0_max_rel_err:.3g}",
                 ("within" if c.frame0_within_tolerance else "OUTSIDE") + f" {c.rtol:g}",
                 "bitwise" if c.noise_bitwise else f"differs ({c.noise_max_abs_err:.3g})",
                 "equal" if c.condition_mask_equal else "DIFFERENT", c.note] for c in check.latents]
    lines = [
        f"{DIFFUSERS_HEADING}: cross-check against this package ({check.preset}, {check.device})", "",
        (f"Preprocessing, ours ({OURS_RESIZE}) against diffusers' `_preprocess_conditioning_image` "
        f"({DIFFUSERS_RESIZE}), on seeded random 8-bit pictures (noise, the worst case for two filters) and a "
         "smooth one; differences in 8-bit levels:"), "",
        *table(["output", "source", "source size", "ours resized to", "diffusers resized to", "max abs", "mean abs",
                "values differing", "cause"], pre_rows), "",
        ("Prepared latents, our stage (single_frame) against diffusers' `prepare_latents` (as shipped), on the same "
        "8-bit image at the output size and seed 0; latent frame 0 as max abs / normwise rel err:"), "",
        *table(["output", "frames", "dtype (ours / diffusers)", "latent frame 0", "tolerance", "noise frames",
                "condition mask", "note"], lat_rows), "",
    ]
    return "\n".join(lines)


def to_dict(check: CrossCheck) -> dict:
    return dataclasses.asdict(check)
