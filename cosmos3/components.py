"""Builds the diffusers components (Wan 2.2 VAE, Cosmos3 transformer, scheduler) from a preset or a local folder."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, Cosmos3OmniTransformer, ModelMixin, UniPCMultistepScheduler
from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, safe_open

from cosmos3 import diffusers_omni, dit_inputs, strict_json
from cosmos3.dit_inputs import PromptIds
from cosmos3.errors import InputError
from cosmos3.presets import Preset


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to `dtype` but keep the model's `_keep_in_fp32_modules` in float32, as from_pretrained does.

    Random-weight and loaded models then run the same mixed-precision graph.
    """
    torch.nn.Module.to(model, dtype)  # the plain cast; diffusers' .to() only adds a warning
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            torch.nn.Module.float(module)
    return model


# The files diffusers' from_pretrained looks for, in its order: a sharded index first, then one file.
_WEIGHTS_NAMES = (SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME)


def check_weights_dir(weights_dir: Path, subfolders: Iterable[str] = ("vae", "transformer")) -> None:
    """Fail fast, before any model is built, on a weights folder that cannot load.

    Each subfolder needs a JSON config.json and every weights file diffusers would read;
    safetensors headers are read (a truncated or foreign file fails here), tensors are not.
    A config whose shapes disagree with its weights is only found by loading (see `_build`).
    """
    if not Path(weights_dir).is_dir():
        raise _weights_error(
            Path(weights_dir), "must be an existing folder (a local diffusers folder: vae/, transformer/)"
        )
    for subfolder in subfolders:
        _check_weights_subfolder(Path(weights_dir), subfolder)


def _weights_error(weights_dir: Path, rule: str) -> InputError:
    return InputError("weights_dir", rule, str(weights_dir))


def _read_json(path: Path, weights_dir: Path, what: str) -> dict:
    try:
        data = strict_json.loads(path.read_text(encoding="utf-8"), f"weights_dir {path}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _weights_error(weights_dir, f"{what} must be a readable JSON file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise _weights_error(weights_dir, f"{what} must hold a JSON object")
    return data


def _check_weights_subfolder(weights_dir: Path, subfolder: str) -> Path:
    folder = weights_dir / subfolder
    if not (folder / "config.json").is_file():
        raise _weights_error(
            weights_dir, f"must be a local diffusers folder with {subfolder}/config.json (nothing is downloaded)"
        )
    _read_json(folder / "config.json", weights_dir, f"{subfolder}/config.json")
    name = next((n for n in _WEIGHTS_NAMES if (folder / n).is_file()), None)
    if name is None:
        raise _weights_error(
            weights_dir,
            f"{subfolder}/ must hold the weights: {SAFETENSORS_WEIGHTS_NAME}, {WEIGHTS_NAME} or a sharded index",
        )
    files = [folder / name]
    if name.endswith(".index.json"):
        weight_map = _read_json(folder / name, weights_dir, f"{subfolder}/{name}").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise _weights_error(weights_dir, f"{subfolder}/{name} must map parameters to shard files (weight_map)")
        files = [folder / shard for shard in sorted(set(weight_map.values()))]
    for path in files:
        if not path.is_file():
            raise _weights_error(weights_dir, f"{subfolder}/{path.name} is listed in the index but missing")
        if path.suffix == ".safetensors":
            try:
                with safe_open(path, framework="pt"):
                    pass
            except (SafetensorError, OSError) as exc:
                raise _weights_error(
                    weights_dir, f"{subfolder}/{path.name} must be a complete safetensors file ({exc})"
                ) from exc
    return folder


def _build(
    model_cls: type[ModelMixin],
    config: dict,
    subfolder: str,
    device: torch.device | str,
    dtype: torch.dtype,
    weights_dir: Path | None,
    seed: int,
) -> ModelMixin:
    if weights_dir is not None:
        folder = _check_weights_subfolder(Path(weights_dir), subfolder)
        try:
            model = model_cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, SafetensorError) as exc:
            # What the checks above cannot see: a config whose shapes disagree with its weights,
            # or corrupt tensor data. Out-of-memory (a RuntimeError) is not the user's input.
            # diffusers' first sentence says what is wrong; the rest is advice for its own arguments.
            reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _weights_error(
                weights_dir, f"{subfolder}/ must load with diffusers' from_pretrained ({reason})"
            ) from exc
    else:
        torch.manual_seed(seed)
        # Built directly on the device: initialising a large model on the CPU first takes minutes.
        with torch.device(device):
            model = cast_like_from_pretrained(model_cls(**config), dtype)
    return model.to(device).eval().requires_grad_(False)


def build_vae(
    preset: Preset,
    device: torch.device | str,
    *,
    dtype: torch.dtype | None = None,
    weights_dir: Path | None = None,
    seed: int = 0,
) -> AutoencoderKLWan:
    """The Wan 2.2 VAE: seeded random weights at the preset's size, or `weights_dir/vae` when given."""
    return _build(AutoencoderKLWan, preset.vae.to_diffusers(), "vae", device, dtype or preset.dtype, weights_dir, seed)


def build_transformer(
    preset: Preset,
    device: torch.device | str,
    *,
    dtype: torch.dtype | None = None,
    weights_dir: Path | None = None,
    seed: int = 0,
) -> Cosmos3OmniTransformer:
    """diffusers' Cosmos3OmniTransformer: seeded random weights at the preset's size, or `weights_dir/transformer`."""
    return _build(
        Cosmos3OmniTransformer, preset.dit.to_diffusers(), "transformer", device, dtype or preset.dtype, weights_dir,
        seed,
    )


def build_scheduler(preset: Preset, *, output_kind: str = "video") -> UniPCMultistepScheduler:
    """Flow-matching UniPC, with Cosmos3's shift for video (T2V / I2V) or image (T2I) output."""
    shift = preset.flow_shift_video if output_kind == "video" else preset.flow_shift_image
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=preset.num_train_timesteps,
        flow_shift=shift,
    )


@dataclass
class Components:
    """Everything the stages share, built once per process."""

    preset: Preset
    device: torch.device
    dtype: torch.dtype
    vae: AutoencoderKLWan
    transformer: Cosmos3OmniTransformer | None = None
    omni: Any = None  # diffusers' Cosmos3OmniPipeline over these parts: the transformer's sequence builders
    prompt: PromptIds | None = None  # the fixed prompt's token ids (cosmos3.dit_inputs)


def build_components(
    preset: Preset,
    device: torch.device | str,
    *,
    dtype: torch.dtype | None = None,
    weights_dir: Path | None = None,
    with_transformer: bool = True,
    seed: int = 0,
) -> Components:
    """VAE always; the transformer and the prompt's token ids only when the denoiser will run."""
    device = torch.device(device)
    dtype = dtype or preset.dtype
    vae = build_vae(preset, device, dtype=dtype, weights_dir=weights_dir, seed=seed)
    if not with_transformer:
        return Components(preset, device, dtype, vae)
    return with_denoiser(preset, device, vae, dtype=dtype, weights_dir=weights_dir, seed=seed)


def with_denoiser(
    preset: Preset,
    device: torch.device | str,
    vae: AutoencoderKLWan,
    *,
    dtype: torch.dtype | None = None,
    weights_dir: Path | None = None,
    seed: int = 0,
) -> Components:
    """Components around an already built `vae`: the transformer, diffusers' pipeline over both (for its
    sequence builders; nothing of it runs but those) and the fixed prompt's token ids."""
    device = torch.device(device)
    dtype = dtype or preset.dtype
    transformer = build_transformer(preset, device, dtype=dtype, weights_dir=weights_dir, seed=seed)
    omni = diffusers_omni.build_pipeline(vae, transformer, scheduler=build_scheduler(preset))
    return Components(preset, device, dtype, vae, transformer, omni, dit_inputs.prompt_ids(omni))
