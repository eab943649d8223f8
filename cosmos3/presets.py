"""Named component sizes: `tiny` for CPU tests, `wan22` for the real Wan 2.2 sizes on a GPU."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cosmos3.errors import InputError

# Per-channel latent statistics of the Wan 2.2 (TI2V-5B) VAE, from its published config.
# They are not weights: the encode normalises with them, so they belong to the preset.
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


@dataclass(frozen=True)
class VAEConfig:
    """Constructor arguments of diffusers' `AutoencoderKLWan` (names as diffusers spells them)."""

    base_dim: int = 160
    decoder_base_dim: int = 256
    z_dim: int = 48
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    is_residual: bool = True
    in_channels: int = 12
    out_channels: int = 12
    patch_size: int = 2
    scale_factor_spatial: int = 16
    scale_factor_temporal: int = 4
    latents_mean: tuple[float, ...] = WAN22_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN22_LATENTS_STD

    def to_diffusers(self) -> dict:
        """Keyword arguments for `AutoencoderKLWan(**...)`; diffusers wants lists, not tuples."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class DiTConfig:
    """Constructor arguments of diffusers' `Cosmos3OmniTransformer` (names as diffusers spells them).

    The defaults are Cosmos3-Nano's, which are also diffusers' own defaults (transformer_cosmos3.py):
    hidden 4096, 32 query and 8 key-value heads of 128, MLP 12288, 48 latent channels in 2x2 patches,
    36 layers, each with an understanding (text) and a generation (vision) pathway of about 193M
    parameters. Only the depth differs here: a few layers keep the default suite short, and
    `--dit-layers 36` runs the whole model.
    """

    hidden_size: int = 4096
    head_dim: int = 128
    intermediate_size: int = 12288
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    num_hidden_layers: int = 4  # Cosmos3-Nano has 36 (FULL_DEPTH)
    latent_channel: int = 48
    latent_patch_size: int = 2
    patch_latent_dim: int = 192  # latent_channel x latent_patch_size**2
    vocab_size: int = 151936
    rope_axes_dim: tuple[int, int, int] = (24, 20, 20)  # mRoPE sections (t, h, w) of head_dim / 2

    def to_diffusers(self) -> dict:
        """Keyword arguments for `Cosmos3OmniTransformer(**...)`; diffusers wants lists, not tuples."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


FULL_DEPTH = 36  # Cosmos3-Nano's layers


@dataclass(frozen=True)
class Preset:
    """Everything that sizes the components; requests choose resolution, frames and steps."""

    name: str
    vae: VAEConfig
    dit: DiTConfig
    dtype: torch.dtype
    num_inference_steps: int = 35
    flow_shift_video: float = 10.0  # Cosmos3's default for T2V / I2V
    flow_shift_image: float = 3.0  # and for T2I
    num_train_timesteps: int = 1000


PRESETS: dict[str, Preset] = {
    # Same architecture family as wan22 (residual, z_dim 48, patch 2, 16x / 4x), small widths.
    "tiny": Preset(
        name="tiny",
        vae=VAEConfig(base_dim=16, decoder_base_dim=24, num_res_blocks=1),
        # The Cosmos3 transformer at toy widths: 2 query heads and 1 key-value head of 16, one layer,
        # a vocabulary large enough for the local tokenizer's ids (cosmos3.prompt).
        dit=DiTConfig(
            hidden_size=32, head_dim=16, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
            num_hidden_layers=1, vocab_size=1024, rope_axes_dim=(4, 2, 2),
        ),
        # fp32: bf16 convolutions on the CPU are slow and would only test the CPU kernels.
        dtype=torch.float32,
        num_inference_steps=6,
    ),
    "wan22": Preset(name="wan22", vae=VAEConfig(), dit=DiTConfig(), dtype=torch.bfloat16),
}


def get_preset(name: str, *, dit_num_layers: int | None = None) -> Preset:
    """The preset called `name`, optionally with another DiT depth (FULL_DEPTH, 36, for all of Cosmos3-Nano)."""
    if name not in PRESETS:
        raise InputError("preset", f"must be one of {sorted(PRESETS)}", name)
    preset = PRESETS[name]
    if dit_num_layers is not None:
        if dit_num_layers < 1:
            raise InputError("dit_num_layers", "must be >= 1", dit_num_layers)
        preset = dataclasses.replace(preset, dit=dataclasses.replace(preset.dit, num_hidden_layers=dit_num_layers))
    return preset


def resolve_preset_name(name: str | None, device_type: str | None = None) -> str:
    """"auto" (or None) is wan22 on CUDA and tiny otherwise; any other name is itself.

    "On CUDA" is `device_type` where the caller has chosen a device, else whether CUDA is present.
    """
    if name in (None, "auto"):
        cuda = device_type == "cuda" if device_type is not None else torch.cuda.is_available()
        return "wan22" if cuda else "tiny"
    if name not in PRESETS:
        raise InputError("preset", f"must be one of {sorted(PRESETS)} or 'auto'", name)
    return name
