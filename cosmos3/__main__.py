"""`python -m cosmos3`: run one Cosmos3 request after a warm-up and print the per-stage table."""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from cosmos3 import timing
from cosmos3.components import build_components, build_scheduler, check_weights_dir
from cosmos3.errors import InputError
from cosmos3.paths import check_output_dir, make_output_dir
from cosmos3.pipeline import Cosmos3Pipeline, PipelineOutput
from cosmos3.presets import PRESETS, Preset, get_preset, resolve_preset_name
from cosmos3.profiler import ProfileOptions
from cosmos3.request import OutputKind, Req
from cosmos3.stages import ENCODE_STRATEGIES
from cosmos3.stages.preprocess import CropWarning, load_and_fit

EXIT_OK, EXIT_COVERAGE, EXIT_USAGE = 0, 1, 2
DEFAULT_TRACE_DIR = Path("results/traces")
DEVICE_TYPES = ("cpu", "cuda")  # what the stages and DeviceTimer synchronise
# Beyond Cosmos3-Nano's 36 layers with room to spare. A wan22 layer is about 0.77 GB in bf16, so a
# mistyped depth would otherwise fail minutes later as an out-of-memory error.
MAX_DIT_LAYERS = 60
# Errors name the request field; where the option that sets it has another name, say so too.
OPTION_OF_FIELD = {"num_inference_steps": "--steps", "dit_num_layers": "--dit-layers", "output_kind": "--task"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cosmos3", description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: wan22 with CUDA, else tiny")
    p.add_argument("--task", choices=("i2v", "t2v", "t2i"), default="i2v")
    p.add_argument("--strategy", choices=ENCODE_STRATEGIES, default="single_frame", help="I2V encode strategy")
    p.add_argument(
        "--height", type=int, default=None, help="multiple of 16, at most 4096; default: 720 (wan22) or 64 (tiny)"
    )
    p.add_argument(
        "--width", type=int, default=None, help="multiple of 16, at most 4096; default: 1280 (wan22) or 96 (tiny)"
    )
    p.add_argument(
        "--num-frames", type=int, default=None, help="4k+1, at most 1201; default 81 (wan22), 17 (tiny), 1 (t2i)"
    )
    p.add_argument("--steps", type=int, default=None, help="denoising steps; default: the preset's")
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--image",
        type=Path,
        default=None,
        help="i2v conditioning image; transparency is composited on black (default: a seeded random one)",
    )
    p.add_argument("--weights-dir", type=Path, default=None, help="local diffusers folder (vae/, transformer/)")
    p.add_argument("--dit-layers", type=int, default=None,
                   help="Cosmos3 transformer depth, 1 to 60 (36 = all of Cosmos3-Nano)")
    p.add_argument("--stage-timer", choices=sorted(timing.STAGE_TIMERS), default="device",
                   help="device: synchronised stage times (default); host: unsynchronised, as upstream's stage timers")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN autotune its convolution algorithms (torch.backends.cudnn.benchmark); default off")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; default: cuda if available, else cpu")
    p.add_argument("--profile", action="store_true", help="profile the request with torch.profiler")
    p.add_argument("--num-profiled-timesteps", type=int, default=-1, help="denoising steps to record; -1 = all")
    p.add_argument("--profile-mode", choices=("steps", "all_stages"), default="steps")
    p.add_argument(
        "--trace-dir", type=Path, default=None, help=f"traces and the seeded image; default {DEFAULT_TRACE_DIR}"
    )
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


@dataclass(frozen=True)
class Plan:
    """A checked command line: every option and input file has passed its rule; nothing is built yet."""

    task: str
    device: torch.device
    preset: Preset
    req: Req
    strategy: str
    profile: ProfileOptions
    trace_dir: Path
    needs_trace_dir: bool  # the seeded conditioning image or a trace will be written there
    weights_dir: Path | None
    show_progress: bool
    stage_timer: str = "device"
    cudnn_benchmark: bool = False


def parse_device(value: str | None) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` naming a device this machine has; None picks cuda when available."""
    if value is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rule = "must be 'cpu', 'cuda' or 'cuda:N'"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InputError("device", rule, value) from exc
    if device.type not in DEVICE_TYPES or (device.type == "cpu" and device.index not in (None, 0)):
        raise InputError("device", rule, value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device", "needs CUDA, which this machine does not have; use --device cpu", value)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(
                "device", f"must name one of this machine's {count} CUDA devices (cuda:0 to cuda:{count - 1})", value
            )
    return device


def check_steps(preset: Preset, output_kind: OutputKind, steps: int) -> None:
    """UniPC needs a distinct integer timestep per step; too many steps make the top ones collide.

    The limit comes from the scheduler itself (1000 / flow shift, about 100 for video and 333
    for images), so it is asked, not hard-coded; without this check UniPC fails an assertion
    after running most of the steps.
    """

    def distinct(n: int) -> bool:
        scheduler = build_scheduler(preset, output_kind=output_kind)
        scheduler.set_timesteps(n)
        return len(set(scheduler.timesteps.tolist())) == n

    if steps <= preset.num_train_timesteps and distinct(steps):
        return
    lo, hi = 1, preset.num_train_timesteps  # distinct(lo) holds; find the largest n that does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if distinct(mid) else (lo, mid - 1)
    shift = preset.flow_shift_video if output_kind == "video" else preset.flow_shift_image
    raise InputError(
        "num_inference_steps",
        f"must be at most {lo} for {output_kind} output: more steps repeat an integer timestep "
        f"(flow shift {shift:g}, {preset.num_train_timesteps} training timesteps) and UniPC cannot step them",
        steps,
    )


def validate(args: argparse.Namespace) -> Plan:
    """Check every option and input file, cheapest first; nothing is created and no model is built."""
    device = parse_device(args.device)
    if args.dit_layers is not None and not 1 <= args.dit_layers <= MAX_DIT_LAYERS:
        raise InputError(
            "dit_num_layers",
            f"must be an integer in [1, {MAX_DIT_LAYERS}] (all of Cosmos3-Nano is 36)",
            args.dit_layers,
        )
    preset_name = resolve_preset_name(args.preset, device.type)
    preset = get_preset(preset_name, dit_num_layers=args.dit_layers)
    real = preset.name == "wan22"
    output_kind: OutputKind = "image" if args.task == "t2i" else "video"
    # `is None`, never `or`: 0 is a value and must meet the rules like any other.
    height = args.height if args.height is not None else (720 if real else 64)
    width = args.width if args.width is not None else (1280 if real else 96)
    if args.num_frames is not None:
        num_frames = args.num_frames
    else:
        num_frames = 1 if args.task == "t2i" else (81 if real else 17)
    steps = args.steps if args.steps is not None else preset.num_inference_steps
    if args.image is not None and args.task != "i2v":
        raise InputError(
            "image", f"only --task i2v takes a conditioning image (the task is {args.task})", str(args.image)
        )
    req = Req(
        height=height,
        width=width,
        num_frames=num_frames,
        seed=args.seed,
        output_kind=output_kind,
        num_inference_steps=steps,
        guidance_scale=args.guidance_scale,
        profile=args.profile,
    )
    req.validate()
    check_steps(preset, output_kind, steps)
    trace_dir = args.trace_dir if args.trace_dir is not None else DEFAULT_TRACE_DIR
    profile = ProfileOptions(trace_dir, args.profile_mode, args.num_profiled_timesteps)
    needs_trace_dir = args.profile or (args.task == "i2v" and args.image is None)
    if needs_trace_dir or args.trace_dir is not None:
        check_output_dir("trace_dir", trace_dir)
    if args.weights_dir is not None:
        check_weights_dir(args.weights_dir)
    if args.image is not None:
        # Exactly what the preprocess stage will do (decode, convert, resize, crop), once, now.
        load_and_fit(args.image, width, height)
        req.image = args.image
    return Plan(
        task=args.task,
        device=device,
        preset=preset,
        req=req,
        strategy=args.strategy,
        profile=profile,
        trace_dir=trace_dir,
        needs_trace_dir=needs_trace_dir,
        weights_dir=args.weights_dir,
        show_progress=not args.no_progress,
        stage_timer=args.stage_timer,
        cudnn_benchmark=args.cudnn_benchmark,
    )


def validate_reporting_warnings(args: argparse.Namespace) -> Plan:
    """`validate`, with its warnings (a heavy crop of the image) printed as `warning: ...` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CropWarning)
        try:
            return validate(args)
        finally:
            for warning in caught:
                print(f"warning: {warning.message}", file=sys.stderr)


def run(plan: Plan) -> int:
    req = plan.req
    if plan.needs_trace_dir:
        make_output_dir("trace_dir", plan.trace_dir)
    if plan.task == "i2v" and req.image is None:
        req.image = seeded_image_file(plan.trace_dir / "condition.png", req.width, req.height, req.seed)
    with warnings.catch_warnings():
        # Reported once by validate_reporting_warnings; the warm-up and the request would repeat it.
        warnings.simplefilter("ignore", CropWarning)
        components = build_components(plan.preset, plan.device, weights_dir=plan.weights_dir)
        pipeline = Cosmos3Pipeline(
            components,
            encode_strategy=plan.strategy,
            profile=plan.profile,
            show_progress=plan.show_progress,
            stage_timer=plan.stage_timer,
        )
        torch.backends.cudnn.benchmark = plan.cudnn_benchmark
        first = pipeline.warmup(req)  # the first request of this shape: autotuning, allocator growth
        out = pipeline(req)
    device = plan.device
    print(
        f"{plan.task} {req.width}x{req.height} {req.num_frames}f, {req.num_inference_steps} steps, "
        f"strategy {plan.strategy}, preset {plan.preset.name}, stage timer {plan.stage_timer}, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
    )
    print(f"first request of this shape (the warm-up; cudnn.benchmark {'on' if plan.cudnn_benchmark else 'off'}):")
    print(stage_table(first))
    print("the request:")
    print(stage_table(out))
    if out.coverage is not None:
        print(f"trace: {out.trace_path}\ncoverage: {out.coverage}")
        if not out.coverage.ok:
            return EXIT_COVERAGE
    return EXIT_OK


def error_line(exc: InputError) -> str:
    """`error: field: rule (got value)`, and the option that sets the field where its name differs."""
    option = OPTION_OF_FIELD.get(exc.field)
    return f"error: {exc}" + (f"; set by {option}" if option else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(validate_reporting_warnings(args))
    except InputError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
