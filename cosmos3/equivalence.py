"""Do the two I2V encode strategies prepare the same latents? Bitwise, else within a stated tolerance."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from diffusers import AutoencoderKLWan

from cosmos3.request import Req
from cosmos3.stages.latent_preparation import Cosmos3LatentPreparationStage

# bf16 has an 8-bit mantissa: one ulp relative to the largest value is 2**-7. Two encodes that
# differ only by kernel choice stay within that; a frame 0 that mixes in later frames does not.
DEFAULT_RTOL = 2.0**-7
DEFAULT_ATOL = 0.0


@dataclass(frozen=True)
class Agreement:
    """How closely one tensor of the new path matches the old. Relative error is normwise: max|a-b| / max|b|."""

    what: str
    bitwise: bool
    max_abs_err: float
    max_rel_err: float
    within_tolerance: bool


def compare_tensors(what: str, new: torch.Tensor, old: torch.Tensor, *, atol: float, rtol: float) -> Agreement:
    if new.shape != old.shape:
        return Agreement(what, False, float("inf"), float("inf"), False)
    bitwise = bool(torch.equal(new, old))
    diff = (new.float() - old.float()).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(old.float().abs().max()) if old.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Agreement(what, bitwise, max_abs, max_rel, bitwise or max_abs <= atol + rtol * scale)


@dataclass(frozen=True)
class EquivalenceReport:
    """single_frame (new) against expand (old) on one request."""

    frame0: Agreement  # latent frame 0 of the prepared latents
    image_latent: Agreement
    latents: Agreement  # the whole prepared latent
    atol: float
    rtol: float

    @property
    def bitwise(self) -> bool:
        return self.frame0.bitwise and self.image_latent.bitwise and self.latents.bitwise

    @property
    def equivalent(self) -> bool:
        return self.frame0.within_tolerance and self.image_latent.within_tolerance and self.latents.within_tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "bitwise": self.bitwise, "equivalent": self.equivalent}

    def __str__(self) -> str:
        if self.bitwise:
            return "EQUIVALENT (bitwise): latent frame 0, image_latent and the whole prepared latent are identical"
        verdict = "EQUIVALENT (within tolerance)" if self.equivalent else "NOT EQUIVALENT"
        worst = max((self.frame0, self.image_latent, self.latents), key=lambda a: a.max_rel_err)
        return (
            f"{verdict}: worst is {worst.what}, max abs err {worst.max_abs_err:.3g}, "
            f"max rel err {worst.max_rel_err:.3g} (tolerance atol={self.atol:g}, rtol={self.rtol:g})"
        )


def check_encode_equivalence(
    vae: AutoencoderKLWan,
    req: Req,
    *,
    dtype: torch.dtype,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> EquivalenceReport:
    """Prepare `req` (an I2V request with image_pixels set) with both strategies, same seed; compare."""
    out = {}
    for strategy in ("single_frame", "expand"):
        stage = Cosmos3LatentPreparationStage(vae, encode_strategy=strategy, dtype=dtype)
        out[strategy] = stage(copy.copy(req))
    new, old = out["single_frame"], out["expand"]
    return EquivalenceReport(
        frame0=compare_tensors("latent frame 0", new.latents[:, :, 0], old.latents[:, :, 0], atol=atol, rtol=rtol),
        image_latent=compare_tensors("image_latent", new.image_latent, old.image_latent, atol=atol, rtol=rtol),
        latents=compare_tensors("prepared latents", new.latents, old.latents, atol=atol, rtol=rtol),
        atol=atol,
        rtol=rtol,
    )
