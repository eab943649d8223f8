"""Where does an e2e request's time go, stage by stage? One request profiled, then each stage's counters.

Why does latent preparation cost 25-60 ms more inside the pipeline than in its stage benchmark?
This profiles one e2e request (after a warm-up request) and, for comparison, the
latent-preparation stage run alone as its benchmark runs it, and prints per stage: wall and device
time, kernels, host-to-device copies (pageable or pinned), syncs, caching-allocator calls
(cudaMalloc / cudaFree: the allocator growing or returning memory) and Python's garbage collections
(how many started inside the stage, and their ms). The request runs with the collector as a serving
process has it, on; the benchmarks keep it out of their rounds (bench.measure.collector).

    python tools/e2e_stage_counters.py --preset wan22 --height 720 --width 1280 --num-frames 81
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure.collector import GC_EVENT, GcPauses
from bench.measure.counters import (
    CAT_ANNOTATION,
    CAT_MEMCPY,
    CAT_RUNTIME,
    TraceEvent,
    call_name,
    count_round,
    split_rounds,
    trace_events,
)
from bench.measure.harness import seeded_image
from cosmos3.__main__ import seeded_image_file
from cosmos3.components import build_components
from cosmos3.pipeline import STAGE_EVENT, Cosmos3Pipeline
from cosmos3.presets import get_preset, resolve_preset_name
from cosmos3.request import Req
from cosmos3.stages import Cosmos3LatentPreparationStage
from cosmos3.timing import DeviceTimer, synchronize

ALLOCATOR_CALLS = ("cudaMalloc", "cudaFree", "cudaHostAlloc", "cudaFreeHost")
ALONE_EVENT = "cosmos3.alone.latent_preparation"


def profiled(fn, device: torch.device) -> list:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof, GcPauses(annotate=True):
        fn()
        synchronize(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as handle:
            return trace_events(json.load(handle))


def describe(events: list, source: str) -> dict:
    counts = count_round(events, source=source)
    runtime = Counter(call_name(e.name) for e in events if e.category == CAT_RUNTIME)
    pageable = sum(1 for e in events if e.category == CAT_MEMCPY and "Pageable" in e.name)
    collections = [e for e in events if e.category == CAT_ANNOTATION and e.name.startswith(GC_EVENT)]
    return {
        "device_ms": counts.device_ms,
        "kernels": counts.kernel_launches,
        "h2d_copies": counts.h2d_copies,
        "h2d_bytes": counts.h2d_bytes,
        "pageable_copies": pageable,
        "syncs": counts.syncs,
        "empty_copies": counts.empty_copies,  # copy/memset calls that enqueued nothing (no device record)
        "unnamed_calls": counts.unnamed_calls,  # runtime calls Kineto named INVALID: unchecked
        **{call: runtime.get(call, 0) for call in ALLOCATOR_CALLS},
        "gc_collections": len(collections),
        "gc_ms": sum(e.duration_us for e in collections) / 1e3,
    }


def stage_table(events: list[TraceEvent], stage_ms: dict[str, float], source: str) -> dict[str, dict]:
    """One row per stage of a profiled request ("e2e <stage>"): its wall time and its counters.

    The trace holds the whole request, so it is split by every stage's STAGE_EVENT annotation at
    once: device work goes to the stage whose call launched it, and work launched by the pipeline
    between stages is no stage's and is left out. A device record whose launching call is missing
    goes by time to the stage it ran in, and one in no stage still raises IncompleteProfile, as in
    the benchmarks.
    """
    def is_stage(name: str) -> bool:
        return name.startswith(STAGE_EVENT)

    # split_rounds orders its windows by start, so do the names.
    names = [e.name.removeprefix(STAGE_EVENT)
             for e in sorted((e for e in events if e.category == CAT_ANNOTATION and is_stage(e.name)),
                             key=lambda e: (e.start_us, e.start_us + e.duration_us))]
    if sorted(names) != sorted(stage_ms):
        raise ValueError(f"the trace's stages {names} are not the request's {list(stage_ms)}")
    by_stage = dict(zip(names, split_rounds(events, annotation=is_stage, ignore_launched_outside=True)))
    return {f"e2e {stage}": {"wall_ms": ms, **describe(by_stage[stage], source)} for stage, ms in stage_ms.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="auto")
    p.add_argument("--strategy", default="single_frame")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--num-frames", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--json", type=Path, help="also write the table as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = get_preset(resolve_preset_name(args.preset))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real = preset.name == "wan22"
    height = args.height if args.height is not None else (720 if real else 64)
    width = args.width if args.width is not None else (1280 if real else 96)
    frames = args.num_frames if args.num_frames is not None else (81 if real else 17)
    steps = args.steps if args.steps is not None else preset.num_inference_steps
    components = build_components(preset, device)
    pipeline = Cosmos3Pipeline(components, encode_strategy=args.strategy)
    # A PNG file larger than the output, as the e2e benchmark conditions on (so preprocessing really runs).
    image = Path(tempfile.mkdtemp()) / "condition.png"
    seeded_image_file(image, width * 5 // 4, height * 5 // 4, seed=0)

    def request() -> Req:
        return Req(height=height, width=width, num_frames=frames, image=image, num_inference_steps=steps)

    pipeline.warmup(request())
    out = {}
    events = profiled(lambda: out.setdefault("e2e", pipeline(request())), device)
    table = stage_table(events, out["e2e"].stage_ms, device.type)
    # The stage alone, its input already on the device (the latent_prep benchmark starts from host memory).
    stage = Cosmos3LatentPreparationStage(components.vae, encode_strategy=args.strategy, dtype=preset.dtype)
    pixels = seeded_image(width, height, device)

    def alone() -> None:
        req = Req(height=height, width=width, num_frames=frames, image=pixels, image_pixels=pixels)
        with DeviceTimer(device) as timer, record_function(ALONE_EVENT):
            stage(req)
        out["alone_ms"] = timer.elapsed_ms

    alone()
    (alone_events,) = split_rounds(profiled(alone, device), annotation=ALONE_EVENT)
    table["latent_preparation alone"] = {"wall_ms": out["alone_ms"], **describe(alone_events, device.type)}
    columns = ["wall_ms", "device_ms", "kernels", "h2d_copies", "h2d_bytes", "pageable_copies", "syncs",
               "empty_copies", "unnamed_calls", *ALLOCATOR_CALLS, "gc_collections", "gc_ms"]
    print(f"{device} {torch.cuda.get_device_name(device) if device.type == 'cuda' else ''} preset {preset.name} "
          f"{width}x{height} {frames}f {steps} steps, {args.strategy}, torch {torch.__version__} (profiled: "
          "wall times include the profiler's overhead)")
    print("| what | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, row in table.items():
        cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else "—" if row[c] is None else str(row[c])
                 for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
