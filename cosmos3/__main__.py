"""`python -m cosmos3`: run one Cosmos3 request after a warm-up and print the per-stage table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from cosmos3.components import build_components
from cosmos3.errors import InputError
from cosmos3.pipeline import Cosmos3Pipeline, PipelineOutput
from cosmos3.presets import PRESETS, get_preset
from cosmos3.profiler import ProfileOptions
from cosmos3.request import Req
from cosmos3.stages import ENCODE_STRATEGIES

EXIT_OK, EXIT_COVERAGE, EXIT_USAGE = 0, 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cosmos3", description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: wan22 with CUDA, else tiny")
    p.add_argument("--task", choices=("i2v", "t2v", "t2i"), default="i2v")
    p.add_argument("--strategy", choices=ENCODE_STRATEGIES, default="single_frame", help="I2V encode strategy")
    p.add_argument("--height", type=int, default=None, help="default: 720 (wan22) or 64 (tiny)")
    p.add_argument("--width", type=int, default=None, help="default: 1280 (wan22) or 96 (tiny)")
    p.add_argument("--num-frames", type=int, default=None, help="4k+1; default 81 (wan22) or 17 (tiny)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps; default: the preset's")
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image", type=Path, default=None, help="conditioning image (default: a seeded random one)")
    p.add_argument("--weights-dir", type=Path, default=None, help="local diffusers folder (vae/, transformer/)")
    p.add_argument("--dit-layers", type=int, default=None, help="DiT stand-in depth (30 = full TI2V-5B)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--profile", action="store_true", help="profile the request with torch.profiler")
    p.add_argument("--num-profiled-timesteps", type=int, default=-1, help="denoising steps to record; -1 = all")
    p.add_argument("--profile-mode", choices=("steps", "all_stages"), default="steps")
    p.add_argument("--trace-dir", type=Path, default=Path("results/traces"))
    p.add_argument("--no-progress", action="store_true", help="hide the denoising progress bar")
    return p.parse_args(argv)


def stage_table(out: PipelineOutput) -> str:
    """Per-stage milliseconds and share of the end-to-end time, as a Markdown table."""
    rows = ["| stage | time (ms) | share |", "|---|---:|---:|"]
    for name, ms in out.stage_ms.items():
        rows.append(f"| {name} | {ms:.1f} | {ms / out.total_ms:.1%} |")
    rows.append(f"| **end to end** | **{out.total_ms:.1f}** | 100% |")
    return "\n".join(rows)


def seeded_image_file(path: Path, width: int, height: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(path)
    return path


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = get_preset(args.preset or ("wan22" if device.type == "cuda" else "tiny"), dit_num_layers=args.dit_layers)
    real = preset.name == "wan22"
    height = args.height or (720 if real else 64)
    width = args.width or (1280 if real else 96)
    num_frames = 1 if args.task == "t2i" else (args.num_frames or (81 if real else 17))
    req = Req(
        height=height,
        width=width,
        num_frames=num_frames,
        seed=args.seed,
        output_kind="image" if args.task == "t2i" else "video",
        num_inference_steps=args.steps or preset.num_inference_steps,
        guidance_scale=args.guidance_scale,
        profile=args.profile,
    )
    # Fail on bad input before writing anything or spending minutes building models.
    req.validate()
    if args.task == "i2v":
        if args.image is None:
            args.trace_dir.mkdir(parents=True, exist_ok=True)
            req.image = seeded_image_file(args.trace_dir / "condition.png", width, height, args.seed)
        else:
            req.image = args.image
    profile = ProfileOptions(args.trace_dir, args.profile_mode, args.num_profiled_timesteps)
    components = build_components(preset, device, weights_dir=args.weights_dir)
    pipeline = Cosmos3Pipeline(
        components,
        encode_strategy=args.strategy,
        profile=profile,
        show_progress=not args.no_progress,
    )
    pipeline.warmup(req)
    out = pipeline(req)
    print(
        f"{args.task} {width}x{height} {num_frames}f, {req.num_inference_steps} steps, strategy {args.strategy}, "
        f"preset {preset.name}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
    )
    print(stage_table(out))
    if out.coverage is not None:
        print(f"trace: {out.trace_path}\ncoverage: {out.coverage}")
        if not out.coverage.ok:
            return EXIT_COVERAGE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
