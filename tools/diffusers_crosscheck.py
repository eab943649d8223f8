"""This package's I2V preparation against diffusers' Cosmos3OmniPipeline: preprocessing and prepared latents.

For the same image, size and seed: the largest pixel difference of our preprocessing against diffusers'
`_preprocess_conditioning_image` and its cause (the filter; the cover size rounded against rounded up), and
our prepared latents against diffusers' `prepare_latents` (bench/measure/crosscheck.py says how). Prints a markdown
section and writes the figures as JSON.

    python tools/diffusers_crosscheck.py --preset tiny --json results/crosscheck.json
    python tools/diffusers_crosscheck.py --preset wan22 --sizes 1280x720,832x480 --num-frames 81
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core import cases
from bench.measure.crosscheck import crosscheck, markdown, to_dict
from cosmos3.errors import InputError
from cosmos3.presets import resolve_preset_name


def parse_size(raw: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in raw.lower().split("x"))
    except ValueError:
        raise InputError("sizes", "must read WIDTHxHEIGHT[,WIDTHxHEIGHT...], e.g. 1280x720,832x480", raw) from None
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="auto", help="tiny | wan22 | auto (wan22 with CUDA, else tiny)")
    p.add_argument("--sizes", help="WIDTHxHEIGHT,... (default: the preset's latent_prep resolutions)")
    p.add_argument("--num-frames", type=int, help="frames of the latent check (default: the grid's fewest)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    args.preset = resolve_preset_name(args.preset)
    grid = cases.grid_for(args.preset)
    args.sizes = [parse_size(s) for s in args.sizes.split(",")] if args.sizes else list(grid.resolutions)
    if args.num_frames is None:
        args.num_frames = min(grid.latent_prep_frames)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        check = crosscheck(args.preset, args.sizes, args.num_frames, device, Path(scratch))
    print(markdown(check))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_dict(check), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
