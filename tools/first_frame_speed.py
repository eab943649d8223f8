"""One-GPU-call measurement of the first_frame_2d encode: speed of each mode against the 3D single-frame encode,
FLOPs and fraction of the bf16 roofline, and the bf16 errors of every strategy against the fp32 oracle.

    python tools/first_frame_speed.py                       # on a GPU: wan22, 1280x720 and 832x480, bf16
    python tools/first_frame_speed.py --preset tiny --device cpu --resolutions 96x64 --rounds 5 --warmup 1 \\
        --compile-modes none --matmul-n 512                 # a CPU smoke run: shows the script works, nothing else

Rounds are interleaved (each round runs every variant once, in a rotating order) so that a level shift of the
machine hits all variants alike; GPU rounds are timed with CUDA events, CPU rounds with the wall clock; warm-up
rounds are excluded; medians are quoted. The markdown table goes to stdout, the JSON to $OUT/first_frame_speed.json
(or --json). Variants whose setup would start after --budget-s are skipped, with the reason in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import diffusers

from bench.measure import harness
from cosmos3.components import build_vae
from cosmos3.equivalence import check_against_oracle, fp32_oracle
from cosmos3.first_frame import COMPILE_MODES, FirstFrameEncoder
from cosmos3.presets import get_preset
from cosmos3.request import Req
from cosmos3.vae import encode_latents

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (without sparsity), by the device name torch reports;
# the SXM parts only (PCIe and NVL parts have other clocks and peaks: their % datasheet is left empty). The
# measured matmul peak is printed beside it: the fraction of the datasheet peak is the roofline figure, the
# matmul one is what is reachable.
DATASHEET_BF16_DENSE_TFLOPS = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H200": 989.0}


def datasheet_peak_tflops(device_name: str) -> float | None:
    return DATASHEET_BF16_DENSE_TFLOPS.get(device_name)
MIN_ROUNDS = 30
ORACLE_NUM_FRAMES = 5  # expand encodes this many frames for its error; frame 0 does not depend on it
SETUP_FAILED = "setup failed"
TABLE_HEADER = (
    "| path | median ms | IQR ms | speedup vs 3D | setup ms | setup GiB | peak GiB | GFLOP | % datasheet | % matmul |"
)


@dataclass
class Variant:
    """One way to encode the first frame; `fn(pixels) -> latents`."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    setup_ms: float | None = None  # capture or compile cost of the first call at this shape
    setup_mem_gib: float | None = None  # memory the first call left allocated (a CUDA graph's pool, caches)
    samples_ms: list[float] = field(default_factory=list)
    warmup_ms: list[float] = field(default_factory=list)
    peak_mem_gib: float | None = None  # peak allocated during one call, above what was allocated before it
    flops: int | None = None
    skipped: str | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    def to_dict(self) -> dict:
        """Everything but the callable (dataclasses.asdict would deep-copy the VAE inside it)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "fn"}
        return out | {"median_ms": self.median_ms}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="wan22", help="component sizes (wan22 on a GPU, tiny for a CPU smoke run)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--resolutions", default="1280x720,832x480", help="WxH list")
    p.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"timed rounds per variant (>= {MIN_ROUNDS} on GPU)")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds per variant first")
    p.add_argument(
        "--compile-modes",
        default=",".join(COMPILE_MODES),
        help=f"comma list of torch.compile modes to measure, or 'none' ({', '.join(COMPILE_MODES)})",
    )
    p.add_argument("--no-cuda-graph", action="store_true")
    p.add_argument("--matmul-n", type=int, default=8192, help="size of the square matmul that measures the peak")
    p.add_argument("--budget-s", type=float, default=480.0, help="no new variant setup starts after this")
    p.add_argument("--json", type=Path, default=None, help="default: $OUT/first_frame_speed.json when $OUT is set")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    args.dtype = getattr(torch, args.dtype)
    args.resolutions = [tuple(int(v) for v in r.split("x")) for r in args.resolutions.split(",")]
    args.compile_modes = [] if args.compile_modes == "none" else args.compile_modes.split(",")
    for mode in args.compile_modes:
        if mode not in COMPILE_MODES:
            p.error(f"--compile-modes: {mode!r} is not one of {COMPILE_MODES}")
    if args.device.type == "cuda" and args.rounds < MIN_ROUNDS:
        p.error(f"--rounds must be >= {MIN_ROUNDS} on a GPU")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
    """One call, from queued to done: CUDA events on a GPU, the wall clock (the work is synchronous) on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def matmul_peak_tflops(n: int, dtype: torch.dtype, device: torch.device, rounds: int = 20) -> float:
    """The median rate of an n x n x n matmul: the matrix peak this device reaches in practice."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    ms = statistics.median(time_once_ms(lambda: a @ b, device) for _ in range(rounds))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_mem_gib(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**30


def seeded_image(height: int, width: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    return harness.seeded_image(width, height, device, seed)


def smooth_image(height: int, width: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    return harness.smooth_image(width, height, device, seed)


def build_variants(vae, args) -> tuple[list[Variant], dict[str, FirstFrameEncoder]]:
    """The 3D reference, the 2D modes; encoders are returned by name for the error check."""
    encoders: dict[str, FirstFrameEncoder] = {}
    variants = [Variant("single_frame (3D)", lambda px: encode_latents(vae, px.unsqueeze(2)))]
    encoders["first_frame_2d eager"] = FirstFrameEncoder(vae)
    # A copy of the 2D kernels, packed once: not the strategy (which never copies); it prices the per-call
    # repacking of the strided weight views that cuDNN needs.
    encoders["first_frame_2d eager, packed weights (a copy)"] = FirstFrameEncoder(
        vae, self_check=False, _pack_weights=True
    )
    if args.device.type == "cuda" and not args.no_cuda_graph:
        encoders["first_frame_2d cuda_graph"] = FirstFrameEncoder(vae, mode="cuda_graph", self_check=False)
    for mode in args.compile_modes:
        encoders[f"first_frame_2d compile {mode}"] = FirstFrameEncoder(
            vae, mode="compile", compile_mode=mode, self_check=False
        )
    variants += [Variant(name, enc) for name, enc in encoders.items()]
    return variants, encoders


def measure_resolution(vae, width: int, height: int, args, started: float,
                       save: Callable[[dict], None] = lambda result: None) -> dict:
    """Every variant at one size; `save(result)` once the timings are in (errors still None)."""
    device = args.device
    pixels = seeded_image(height, width, device).to(vae.dtype)
    variants, encoders = build_variants(vae, args)
    # 1. Setup: the first call at this shape (captures a graph, compiles) is timed on its own.
    for v in variants:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            v.skipped = f"budget: setup would start at {elapsed:.0f} s > --budget-s {args.budget_s:.0f}"
            continue
        try:
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
            v.setup_ms = time_once_ms(lambda v=v: v.fn(pixels), device)
            if before is not None:
                v.setup_mem_gib = (torch.cuda.memory_allocated(device) - before) / 2**30
        except Exception as exc:  # noqa: BLE001 -- recorded, printed and fails the exit status; the rest still run
            v.skipped = f"{SETUP_FAILED}: {type(exc).__name__}: {exc}"[:500]
            print(f"[{width}x{height}] {v.name}: {v.skipped}", file=sys.stderr)
    ready = [v for v in variants if v.skipped is None]
    for v in ready:
        if isinstance(v.fn, FirstFrameEncoder) and v.fn.setup_ms:
            v.setup_ms = v.fn.setup_ms[tuple(pixels.shape)]  # the encoder's own count (capture / compile)
    # 2. Warm-up, then interleaved timed rounds in a rotating order.
    for _ in range(args.warmup):
        for v in ready:
            v.warmup_ms.append(time_once_ms(lambda v=v: v.fn(pixels), device))
    for r in range(args.rounds if ready else 0):  # the budget may have skipped every variant
        k = r % len(ready)
        for v in ready[k:] + ready[:k]:
            v.samples_ms.append(time_once_ms(lambda v=v: v.fn(pixels), device))
    # 3. Memory and FLOPs, outside the timed rounds (FLOPs of the eager paths; the modes run the same ops).
    for v in ready:
        v.peak_mem_gib = peak_mem_gib(lambda v=v: v.fn(pixels), device)
    eager_2d = next((v for v in ready if v.name == "first_frame_2d eager"), None)
    flops_3d = count_flops(lambda: variants[0].fn(pixels)) if variants[0] in ready else None
    flops_2d = count_flops(lambda: eager_2d.fn(pixels)) if eager_2d else None  # every 2D mode runs these ops
    for v in ready:
        v.flops = flops_3d if v is variants[0] else flops_2d
    result = {"width": width, "height": height, "variants": [v.to_dict() for v in variants], "errors": None,
              "_variants": variants}
    save(result)  # the timings are kept even if the error check is cut short
    # 4. bf16 errors against the fp32 oracle, on a random and a smooth image, of every strategy and of the
    # modes that were measured: a skipped or failed one is not run again here.
    measured = {name: enc for name, enc in encoders.items() if any(v.name == name for v in ready)}
    result["errors"] = oracle_errors(vae, measured, width, height, args) if ready else []
    return result


def oracle_errors(vae, encoders: dict[str, FirstFrameEncoder], width: int, height: int, args) -> list[dict]:
    oracle = fp32_oracle(vae)
    rows = []
    for image_name, image in (("random", seeded_image(height, width, args.device, 1)),
                              ("smooth", smooth_image(height, width, args.device, 1))):  # fmt: skip
        req = Req(height=height, width=width, num_frames=ORACLE_NUM_FRAMES, image=image, image_pixels=image)
        checks = [("expand", "expand", None), ("single_frame", "single_frame", None)]
        checks += [(name, "first_frame_2d", {"first_frame": enc}) for name, enc in encoders.items()]
        for label, strategy, kwargs in checks:
            report = check_against_oracle(oracle, vae, req, strategy, dtype=vae.dtype, stage_kwargs=kwargs)
            rows.append({"image": image_name, "path": label, **report.to_dict()})
    del oracle
    if args.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def write_json(path: Path, data: dict) -> None:
    """Write `data` to `path` through a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def environment(args) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": str(args.device),
        "preset": args.preset,
        "dtype": str(args.dtype).removeprefix("torch."),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    try:
        root = Path(__file__).resolve().parents[1]
        env["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["commit"] = None
    if args.device.type == "cuda":
        props = torch.cuda.get_device_properties(args.device)
        env |= {"gpu": props.name, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def markdown(results: list[dict], matmul_tflops: float, args, device_name: str) -> str:
    datasheet = datasheet_peak_tflops(device_name)
    peak = (
        f"matmul peak measured ({args.matmul_n}^3, {str(args.dtype).removeprefix('torch.')}): "
        f"{matmul_tflops:.4g} TFLOP/s; datasheet dense bf16 peak used for the roofline: "
        + (f"{datasheet:g} TFLOP/s ({device_name})" if datasheet else f"none known for {device_name}")
    )
    lines = [peak, ""]
    for res in results:
        variants: list[Variant] = res["_variants"]
        base = variants[0].median_ms
        lines += [
            f"### {res['width']}x{res['height']}",
            "",
            TABLE_HEADER,
            "|---" * TABLE_HEADER.count(" | ") + "|---|",
        ]
        for v in variants:
            if v.skipped:
                lines.append(f"| {v.name} | skipped: {v.skipped} | | | | | | | | |")
                continue
            q = statistics.quantiles(v.samples_ms, n=4) if len(v.samples_ms) >= 2 else [v.median_ms] * 3
            flops = v.flops
            gflop = f"{flops / 1e9:.4g}" if flops else ""
            rate = flops / (v.median_ms * 1e-3) / 1e12 if flops else None
            lines.append(
                f"| {v.name} | {v.median_ms:.3f} | {q[2] - q[0]:.3f} | {base / v.median_ms:.2f}x | "
                f"{'' if v.setup_ms is None else f'{v.setup_ms:.0f}'} | "
                f"{'' if v.setup_mem_gib is None else f'{v.setup_mem_gib:.2f}'} | "
                f"{'' if v.peak_mem_gib is None else f'{v.peak_mem_gib:.2f}'} | {gflop} | "
                f"{'' if rate is None or not datasheet else f'{100 * rate / datasheet:.3g}'} | "
                f"{'' if rate is None else f'{100 * rate / matmul_tflops:.3g}'} |"
            )
        lines += [
            "",
            "| image | path | rel err (max) | rel err (rms) | single_frame's (max / rms) | equivalent |",
            "|---|---|---|---|---|---|",
        ]
        for e in res["errors"]:
            lines.append(
                f"| {e['image']} | {e['path']} | {e['max_rel_err']:.3g} | {e['rms_rel_err']:.3g} | "
                f"{e['reference_max_rel_err']:.3g} / {e['reference_rms_rel_err']:.3g} | {e['equivalent']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Every compile mode x resolution is a new compiled entry for the same code: lift dynamo's limit above that.
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    started = time.perf_counter()
    preset = get_preset(args.preset)
    vae = build_vae(preset, args.device, dtype=args.dtype)
    matmul = matmul_peak_tflops(args.matmul_n, args.dtype, args.device)
    env = environment(args)
    device_name = env.get("gpu") or env.get("cpu") or "cpu"
    path = args.json or (Path(os.environ["OUT"]) / "first_frame_speed.json" if os.environ.get("OUT") else None)
    results: list[dict] = []

    def save(partial: dict | None = None, complete: bool = False) -> None:
        """The JSON as it stands, replaced atomically: a call cut short keeps every part measured so far."""
        if path is None:
            return
        done = results + ([partial] if partial is not None and all(partial is not r for r in results) else [])
        write_json(path, {
            "environment": env,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "datasheet_bf16_dense_tflops": datasheet_peak_tflops(device_name),
            "matmul_tflops": matmul,
            "wall_s": time.perf_counter() - started,
            "complete": complete,  # False: cut short; the last resolution may lack its errors (None)
            "results": [{k: v for k, v in r.items() if k != "_variants"} for r in done],
        })

    save()
    for w, h in args.resolutions:
        results.append(measure_resolution(vae, w, h, args, started, save))
        save()
    print(markdown(results, matmul, args, device_name))
    save(complete=True)
    if path is not None:
        print(f"wrote {path}")
    failed = [e for r in results for e in r["errors"] if "first_frame_2d" in e["path"] and not e["equivalent"]]
    broken = [v for r in results for v in r["_variants"] if v.skipped and v.skipped.startswith(SETUP_FAILED)]
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
