"""Do the two I2V encode strategies prepare the same latents? Bitwise, else within a stated tolerance."""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from diffusers import AutoencoderKLWan

from cosmos3.errors import InputError
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


class Errors(NamedTuple):
    max_abs: float  # largest |new - old|
    max_rel: float  # max_abs over `scale`
    scale: float  # old's largest magnitude


def max_errors(new: torch.Tensor, old: torch.Tensor) -> Errors:
    """The largest difference of two tensors of one shape, absolute and relative to `old`'s largest value."""
    if new.shape != old.shape:  # broadcasting would compare something else
        raise ValueError(f"max_errors needs tensors of one shape, not {tuple(new.shape)} and {tuple(old.shape)}")
    diff = (new.float() - old.float()).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(old.float().abs().max()) if old.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return Errors(max_abs, max_rel, scale)


def compare_tensors(what: str, new: torch.Tensor, old: torch.Tensor, *, atol: float, rtol: float) -> Agreement:
    if new.shape != old.shape:
        return Agreement(what, False, math.inf, math.inf, False)
    bitwise = bool(torch.equal(new, old))
    err = max_errors(new, old)
    return Agreement(what, bitwise, err.max_abs, err.max_rel, bitwise or err.max_abs <= atol + rtol * err.scale)


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


# Against an fp32 oracle: for a strategy that computes the same function in another order (first_frame_2d),
# bitwise equality with the old path is not the promise; being no less accurate than it is.

ORACLE_STRATEGY = "single_frame"  # the oracle: diffusers' 3D encode of the one frame, in fp32
# fp32 reorders sums only: the relative error against the fp32 oracle stays within this.
ORACLE_FP32_RTOL = 1e-5
# In a low-precision dtype the strategy's error against the oracle may exceed the reference path's by these
# factors. The RMS error of two equally accurate bf16 paths agrees within a few percent; their max error is the
# extreme of the rounding noise and moves more: measured on the CPU (tiny and mid-size random VAEs, 64x96 and
# 128x192 images), 2D/3D ratios of 0.92-1.05 (RMS) and 0.84-1.37 (max). So the RMS carries the 1.1 rule and
# the max a looser bound that still catches a localised error.
ORACLE_FACTOR = 1.1
ORACLE_MAX_FACTOR = 1.5


def fp32_oracle(vae: AutoencoderKLWan) -> AutoencoderKLWan:
    """An fp32 copy of `vae` on the same device: the same weights (upcast, exactly), for the oracle."""
    oracle = copy.deepcopy(vae)
    torch.nn.Module.to(oracle, torch.float32)  # the plain cast; diffusers' .to() only adds a warning
    return oracle.eval().requires_grad_(False)


def rms_rel_err(new: torch.Tensor, old: torch.Tensor) -> float:
    """Normwise in the 2-norm: ||new - old|| / ||old|| (inf where shapes differ)."""
    if new.shape != old.shape:
        return math.inf
    old64 = old.double()
    scale = float(old64.norm())
    err = float((new.double() - old64).norm())
    return err / scale if scale > 0 else (0.0 if err == 0 else math.inf)


@dataclass(frozen=True)
class OracleReport:
    """A strategy and a reference strategy, both in the dtype under test, against the fp32 oracle on one request.

    Errors are of the image latent (latent frame 0): max_rel_err normwise as compare_tensors
    (max|a - oracle| / max|oracle|), rms_rel_err in the 2-norm.
    """

    strategy: str
    reference_strategy: str
    dtype: str
    max_abs_err: float  # the strategy against the oracle
    max_rel_err: float
    rms_rel_err: float
    reference_max_abs_err: float  # the reference strategy against the oracle
    reference_max_rel_err: float
    reference_rms_rel_err: float
    factor: float  # on the RMS error
    max_factor: float  # on the max error
    floor_rtol: float  # both limits are at least this (the fp32 rule, where the reference is exact)
    bitwise: bool  # the image latent is the oracle's bit for bit, and the noise frames are identical
    noise_identical: bool  # the prepared latents' noise frames (1..) and velocity mask equal the reference's

    @property
    def limit_rms_rel_err(self) -> float:
        return max(self.factor * self.reference_rms_rel_err, self.floor_rtol)

    @property
    def limit_max_rel_err(self) -> float:
        return max(self.max_factor * self.reference_max_rel_err, self.floor_rtol)

    @property
    def equivalent(self) -> bool:
        return (
            self.rms_rel_err <= self.limit_rms_rel_err
            and self.max_rel_err <= self.limit_max_rel_err
            and self.noise_identical
        )

    @property
    def reference(self) -> str:
        return f"fp32 oracle ({ORACLE_STRATEGY})"

    @property
    def rule(self) -> str:
        ref = self.reference_strategy
        return (
            f"image latent vs {self.reference} in {self.dtype}: rms rel err <= max({self.factor:g} x {ref}'s "
            f"{self.reference_rms_rel_err:.3g}, {self.floor_rtol:g}) and max rel err <= max({self.max_factor:g} x "
            f"{ref}'s {self.reference_max_rel_err:.3g}, {self.floor_rtol:g}); noise frames identical to {ref}'s"
        )

    def record_fields(self) -> dict:
        """The fields of bench.core.records.EquivalenceRecord, by name (cosmos3 does not import bench)."""
        return {
            "equivalent": self.equivalent,
            "bitwise": self.bitwise,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "reference": self.reference,
            "rule": self.rule,
        }

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "limit_rms_rel_err": self.limit_rms_rel_err,
            "limit_max_rel_err": self.limit_max_rel_err,
            "equivalent": self.equivalent,
            "reference": self.reference,
            "rule": self.rule,
        }

    def __str__(self) -> str:
        verdict = "EQUIVALENT" if self.equivalent else "NOT EQUIVALENT"
        noise = "" if self.noise_identical else f"; noise frames DIFFER from {self.reference_strategy}'s"
        return (
            f"{verdict}: {self.strategy} against {self.reference} in {self.dtype}: rms rel err "
            f"{self.rms_rel_err:.3g} (limit {self.limit_rms_rel_err:.3g}), max rel err {self.max_rel_err:.3g} "
            f"(limit {self.limit_max_rel_err:.3g}); {self.reference_strategy}'s: {self.reference_rms_rel_err:.3g} / "
            f"{self.reference_max_rel_err:.3g}{noise}"
        )


def check_against_oracle(
    vae_fp32: AutoencoderKLWan,
    vae_under_test: AutoencoderKLWan,
    req: Req,
    strategy: str,
    *,
    reference_strategy: str = "single_frame",
    factor: float = ORACLE_FACTOR,
    max_factor: float = ORACLE_MAX_FACTOR,
    floor_rtol: float = ORACLE_FP32_RTOL,
    dtype: torch.dtype | None = None,
    stage_kwargs: dict | None = None,
) -> OracleReport:
    """Prepare `req` (I2V, image_pixels set) with `strategy` and `reference_strategy` on `vae_under_test` (in
    `dtype`, default the VAE's), and with the oracle on `vae_fp32`; judge the strategy by the reference's error.

    `vae_fp32` is the same weights in fp32 (`fp32_oracle(vae_under_test)`). `stage_kwargs` go to the strategy's
    stage only (e.g. `first_frame=FirstFrameEncoder(vae, mode=...)`).
    """
    if vae_fp32.dtype != torch.float32:
        raise InputError("vae_fp32", "must be float32 (the oracle)", str(vae_fp32.dtype))
    dtype = dtype or vae_under_test.dtype
    with full_fp32():
        oracle = Cosmos3LatentPreparationStage(vae_fp32, encode_strategy=ORACLE_STRATEGY, dtype=torch.float32)(
            copy.copy(req)
        )
    ref = Cosmos3LatentPreparationStage(vae_under_test, encode_strategy=reference_strategy, dtype=dtype)(copy.copy(req))
    new = Cosmos3LatentPreparationStage(vae_under_test, encode_strategy=strategy, dtype=dtype, **(stage_kwargs or {}))(
        copy.copy(req)
    )
    want = oracle.image_latent.to(vae_under_test.device)  # pragma: no mutate -- a device move: a no-op on a CPU
    got, ref_got = max_errors(new.image_latent, want), max_errors(ref.image_latent, want)
    noise_identical = (
        new.latents.shape == ref.latents.shape
        and torch.equal(new.latents[:, :, 1:], ref.latents[:, :, 1:])
        and torch.equal(new.velocity_mask, ref.velocity_mask)
    )
    return OracleReport(
        strategy=strategy,
        reference_strategy=reference_strategy,
        dtype=str(dtype).removeprefix("torch."),
        max_abs_err=got.max_abs,
        max_rel_err=got.max_rel,
        rms_rel_err=rms_rel_err(new.image_latent, want),
        reference_max_abs_err=ref_got.max_abs,
        reference_max_rel_err=ref_got.max_rel,
        reference_rms_rel_err=rms_rel_err(ref.image_latent, want),
        factor=factor,
        max_factor=max_factor,
        floor_rtol=floor_rtol,
        bitwise=noise_identical and new.image_latent.dtype == want.dtype and torch.equal(new.image_latent, want),
        noise_identical=noise_identical,
    )


@contextlib.contextmanager
def full_fp32():
    """TF32 off for convolutions and matmuls (PyTorch lets cuDNN convolutions use TF32 by default: an fp32 oracle
    on a GPU would carry ~1e-3 relative error, the size of what it must judge). A no-op on the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
