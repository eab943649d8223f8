"""The measured code of each benchmark kind: one definition, run by the pytest benchmarks and the compare worker.

A workload is built outside the timed region (models, inputs, stage objects) and returns the
callable one round times. The pytest benchmarks (bench/benchmarks/test_kinds.py) and the compare
worker both build the parts once per process (`Models`) and ask `build` for any case. Under
`python -m bench compare` these functions are the head's, and `cosmos3` is each side's own, so
a base that lacks what a workload needs fails here (ImportError, AttributeError, TypeError) and
that case is reported as not comparable. That is why each kind imports the cosmos3 code it
measures inside its own function: a base without the pipeline loses the end-to-end cases only.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan

from bench.core.cases import KINDS, Grid
from bench.core.kinds import Kind
from bench.core.records import CaseSpec, EquivalenceRecord
from bench.measure.harness import RoundPolicy, RunControls, diffusers_equivalence_for, equivalence_for, seeded_image
from cosmos3.errors import InputError

if TYPE_CHECKING:
    from cosmos3.components import Components
    from cosmos3.presets import Preset
    from cosmos3.request import Req

# One warm-up request is a whole denoise loop plus a decode: every kernel has run by its end
# (the VAE was already warm from the latent-prep cases). Min 5 timed rounds keep the gate's power.
E2E_ROUNDS = RoundPolicy(warmup_rounds=1, min_rounds=5, max_rounds=10)


@dataclass
class Workload:
    """One case's round, ready to time: `fn` is all a timed round runs."""

    fn: Callable[[], Any]
    policy: RoundPolicy | None = None  # the kind's rounds; None: the harness default
    on_round: Callable[[Any], None] | None = None  # sees each timed round's result, outside the timing
    # Per-stage times of each timed round (end-to-end cases), kept by on_round.
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    profile: bool = True  # profiled rounds for counters and device time beside the timed ones
    # The optimisation's equivalence check on the same request, run outside the timed rounds.
    equivalence: Callable[[], EquivalenceRecord | None] = lambda: None
    num_inference_steps: int | None = None  # denoising steps of each request (end-to-end cases)

    def stage_samples_ms(self) -> dict[str, tuple[float, ...]]:
        return {stage: tuple(values) for stage, values in self.stage_ms.items()}

    def result_fields(self) -> dict[str, Any]:
        """The CaseResult fields the workload itself keeps (after its timed rounds)."""
        return {"stage_samples_ms": self.stage_samples_ms(), "num_inference_steps": self.num_inference_steps}


def i2v_request(case: CaseSpec, pixels: torch.Tensor) -> Req:
    from cosmos3.request import Req

    return Req(height=case.height, width=case.width, num_frames=case.num_frames, image=pixels, image_pixels=pixels)


def latent_prep(case: CaseSpec, vae: AutoencoderKLWan, *, dtype: torch.dtype, controls: RunControls) -> Workload:
    """The stage as upstream runs it: noise, encode by strategy, mask and mix. The preprocessed image is in
    host memory, as upstream's `preprocessed_image` is: every strategy copies what it encodes to the device
    inside the round (expand the whole repeated video, the others the one frame)."""
    from cosmos3.stages import Cosmos3LatentPreparationStage

    strategy = controls.strategy_for(case.strategy)  # a negative control may revert it
    stage = Cosmos3LatentPreparationStage(vae, encode_strategy=strategy, dtype=dtype)
    pixels = seeded_image(case.width, case.height)  # on the host
    return Workload(lambda: stage(i2v_request(case, pixels)),
                    equivalence=lambda: equivalence_for(vae, i2v_request(case, pixels), case.strategy, strategy, dtype))


def seeded_pil_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """harness.seeded_image as the 8-bit RGB picture a user hands diffusers' pipeline: each value in [-1, 1]
    mapped to [0, 255] and rounded."""
    pixels = seeded_image(width, height, seed=seed)[0].permute(1, 2, 0)
    return PIL.Image.fromarray(((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())


# The dtype Cosmos3OmniPipeline.__call__ hands prepare_latents (its `sampling_dtype`): the repeated video is
# built in float32 on the device, and _encode_video casts it to the VAE's dtype.
DIFFUSERS_SAMPLING_DTYPE = torch.float32


def diffusers_pipeline(vae: AutoencoderKLWan) -> Any:
    """diffusers' Cosmos3OmniPipeline over this VAE, for its latent preparation (no transformer: an I2V
    request's prepare_latents never reads it; a local tokenizer; the safety checker off)."""
    from cosmos3 import diffusers_omni

    return diffusers_omni.build_pipeline(vae)


def diffusers_prepare_latents(case: CaseSpec, pipe: Any, *, device: torch.device, controls: RunControls) -> Workload:
    """diffusers' own Cosmos3OmniPipeline.prepare_latents for one I2V request, as shipped (the whole repeated
    video encoded) or with the single-frame encode patch (cosmos3.diffusers_omni.encode_patch).

    The image is a PIL picture at the output size, made outside the timed round; the round runs what
    prepare_latents runs: diffusers' preprocessing of it on the host, its copy to the device, the video,
    the encode, the noise and the mix. The revert control runs the shipped encode under the single_frame label.
    """
    from cosmos3 import diffusers_omni

    encode = controls.strategy_for(case.strategy, replaced=diffusers_omni.SHIPPED)
    image = seeded_pil_image(case.width, case.height)
    dtype = DIFFUSERS_SAMPLING_DTYPE

    def prepare() -> diffusers_omni.PreparedLatents:
        return diffusers_omni.prepare_i2v_latents(pipe, image, num_frames=case.num_frames, height=case.height,
                                                  width=case.width, seed=0, device=device, dtype=dtype,
                                                  encode=encode)

    return Workload(prepare, equivalence=lambda: diffusers_equivalence_for(pipe, image, case, encode, device=device,
                                                                           dtype=dtype))


def vae_encode(case: CaseSpec, vae: AutoencoderKLWan, *, device: torch.device) -> Workload:
    """The VAE encode alone, on a video prepared outside the timed region (1 frame = the single-frame path)."""
    from cosmos3.stages.latent_preparation import encode_input
    from cosmos3.vae import encode_latents

    pixels = seeded_image(case.width, case.height, device)
    video = encode_input(pixels, case.num_frames, "single_frame" if case.num_frames == 1 else "expand")
    return Workload(lambda: encode_latents(vae, video))


def e2e(case: CaseSpec, components: Components, *, image_path: Path, steps: int,
        controls: RunControls) -> Workload:
    """An I2V request through the whole pipeline, with its device-synchronised per-stage times."""
    from cosmos3.pipeline import Cosmos3Pipeline
    from cosmos3.request import Req
    from cosmos3.stages import Cosmos3ImagePreprocessStage

    strategy = controls.strategy_for(case.strategy)  # a negative control may revert it
    pipeline = Cosmos3Pipeline(components, encode_strategy=strategy)

    def request() -> Req:
        return Req(height=case.height, width=case.width, num_frames=case.num_frames, image=image_path,
                   num_inference_steps=steps)

    def equivalence() -> EquivalenceRecord | None:
        # As in latent_prep, on the same request (its preprocessed image).
        req = Cosmos3ImagePreprocessStage()(request())
        return equivalence_for(components.vae, req, case.strategy, strategy, components.dtype)

    # No profiled rounds: a whole request under the profiler costs a minute of GPU time per case.
    workload = Workload(lambda: pipeline(request()), policy=E2E_ROUNDS, profile=False, equivalence=equivalence,
                        num_inference_steps=steps)

    def keep_stage_times(output: Any) -> None:
        for stage, ms in output.stage_ms.items():
            workload.stage_ms[stage].append(ms)

    workload.on_round = keep_stage_times
    return workload


def diffusers_e2e(case: CaseSpec, components: Components, *, steps: int) -> Workload:
    """One image-to-video request through diffusers' own Cosmos3OmniPipeline.__call__ as shipped, on the same
    VAE, transformer and scheduler as e2e (`components.omni`), with its device-synchronised split into
    prepare_latents, the denoise loop and decode (cosmos3.diffusers_omni.timed_call).

    The request is e2e's: the same prompt, size, frames, steps and guidance scale, and the PIL picture
    diffusers_prepare_latents hands it. Frames stay on the device (`output_type="pt"`), as this package's
    decoding stage leaves them; nothing is downloaded, and the safety checker is off.
    """
    from cosmos3 import diffusers_omni
    from cosmos3.request import Req

    pipe = components.omni
    pipe.set_progress_bar_config(disable=True)
    image = seeded_pil_image(case.width, case.height)
    device = components.device

    def request() -> diffusers_omni.TimedCall:
        return diffusers_omni.timed_call(
            pipe, device=device, encode=case.strategy or diffusers_omni.SHIPPED, prompt=diffusers_omni.PROMPT,
            image=image, num_frames=case.num_frames, height=case.height, width=case.width,
            num_inference_steps=steps, guidance_scale=Req.guidance_scale, fps=float(Req.fps),
            generator=torch.Generator(device=device).manual_seed(0), output_type="pt")

    # No profiled rounds, as in e2e: a whole request under the profiler costs a minute of GPU time.
    workload = Workload(request, policy=E2E_ROUNDS, profile=False, num_inference_steps=steps)

    def keep_stage_times(output: diffusers_omni.TimedCall) -> None:
        for stage, ms in output.stage_ms.items():
            workload.stage_ms[stage].append(ms)

    workload.on_round = keep_stage_times
    return workload


def write_condition_image(path: Path, width: int, height: int) -> Path:
    """A seeded random RGB image larger than the output, so that preprocessing really resizes and crops."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(height * 5 // 4, width * 5 // 4, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


class built_once:  # a decorator, named like functools.cached_property
    """A part of Models built on first use and then kept, and so is a failed build: every later case that needs
    the part raises the first build's error again rather than build it again (a bad --weights-dir, or a
    transformer that does not fit, costs one attempt, as a failed pytest fixture does, not one per case)."""

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, models: Any, owner: type | None = None) -> Any:
        if models is None:
            return self
        kept = models.__dict__.setdefault("_built", {})
        if self.name not in kept:
            try:
                kept[self.name] = (self.build(models), None)
            except Exception as exc:  # noqa: BLE001 -- kept, and raised again to every case that needs the part
                kept[self.name] = (None, exc)
        value, error = kept[self.name]
        if error is not None:
            raise error
        return value


class Models:
    """What the workloads share in one process, each part built on first use and then kept."""

    def __init__(self, preset: Preset, device: torch.device, grid: Grid, scratch_dir: Path,
                 weights_dir: Path | None = None) -> None:
        self.preset = preset
        self.device = device
        self.grid = grid
        self.scratch_dir = Path(scratch_dir)
        self.weights_dir = weights_dir

    @built_once
    def vae(self) -> AutoencoderKLWan:
        from cosmos3.components import build_vae

        return build_vae(self.preset, self.device, weights_dir=self.weights_dir)

    @built_once
    def diffusers_pipeline(self) -> Any:
        return diffusers_pipeline(self.vae)

    @built_once
    def components(self) -> Components:
        """The VAE with the Cosmos3 transformer and the fixed prompt's token ids: what the end-to-end cases run.
        Built on the first end-to-end case only: the transformer is the largest model."""
        from cosmos3.components import with_denoiser

        return with_denoiser(self.preset, self.device, self.vae, weights_dir=self.weights_dir)

    @functools.cache  # noqa: B019 (one Models per process; the images must outlive the calls)
    def image_path(self, width: int, height: int) -> Path:
        return write_condition_image(self.scratch_dir / f"condition-{width}x{height}.png", width, height)


# Each kind's workload from the parts one process shares (Models), for the pytest benchmarks and the compare
# worker alike. A test holds every kind of the grid (bench.core.cases.KINDS) to one entry here.
BUILDERS: dict[str, Callable[[CaseSpec, Models, RunControls], Workload]] = {
    Kind.LATENT_PREP: lambda case, m, controls: latent_prep(case, m.vae, dtype=m.preset.dtype, controls=controls),
    Kind.DIFFUSERS_PREPARE_LATENTS: lambda case, m, controls: diffusers_prepare_latents(
        case, m.diffusers_pipeline, device=m.device, controls=controls),
    Kind.VAE_ENCODE: lambda case, m, _controls: vae_encode(case, m.vae, device=m.device),
    Kind.E2E: lambda case, m, controls: e2e(case, m.components, image_path=m.image_path(case.width, case.height),
                                            steps=m.grid.e2e_steps, controls=controls),
    Kind.DIFFUSERS_E2E: lambda case, m, _controls: diffusers_e2e(case, m.components, steps=m.grid.e2e_steps),
}


def build(case: CaseSpec, models: Models, controls: RunControls) -> Workload:
    """The workload of any case, from parts built once per process."""
    builder = BUILDERS.get(case.benchmark)
    if builder is None:
        raise InputError("case.benchmark", f"has no workload ({', '.join(KINDS)})", case.benchmark)
    return builder(case, models, controls)
