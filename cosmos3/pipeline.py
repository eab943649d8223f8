"""The Cosmos3 pipeline: five stages in order, each validated and timed with device synchronisation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from torch.profiler import record_function

from cosmos3 import timing
from cosmos3.components import Components
from cosmos3.errors import InputError
from cosmos3.profiler import Coverage, ProfileOptions, RequestProfiler, check_coverage
from cosmos3.request import Req
from cosmos3.stages import (
    Cosmos3DecodingStage,
    Cosmos3DenoisingStage,
    Cosmos3ImagePreprocessStage,
    Cosmos3LatentPreparationStage,
    Cosmos3TimestepPreparationStage,
    EncodeStrategy,
    PipelineStage,
)
from cosmos3.timing import DeviceTimer

# Each stage runs inside record_function(STAGE_EVENT + name), so that a trace splits by stage.
STAGE_EVENT = "cosmos3.stage."


@dataclass
class PipelineOutput:
    """The finished request, its per-stage times in pipeline order, and the trace if it was profiled."""

    req: Req
    stage_ms: dict[str, float]
    total_ms: float
    trace_path: Path | None = None
    coverage: Coverage | None = field(default=None)


class Cosmos3Pipeline:
    """preprocess -> latent preparation (strategy) -> timesteps -> denoising -> decoding."""

    def __init__(
        self,
        components: Components,
        *,
        encode_strategy: EncodeStrategy = "single_frame",
        profile: ProfileOptions | None = None,
        show_progress: bool = False,
        stage_timer: str = "device",
    ) -> None:
        """`stage_timer`: "device" synchronises around every stage (this suite's figures); "host" times each
        stage on the host alone, as upstream's stage timers do (cosmos3.timing.HostTimer). The total is
        synchronised either way."""
        timing.stage_timer(stage_timer, components.device)  # checks the name before anything is built
        if components.transformer is None or components.prompt is None:
            raise InputError("components", "the pipeline needs the transformer (build with with_transformer=True)")
        self.components = components
        self.stage_timer = stage_timer
        self.profile = profile or ProfileOptions()
        self.denoising = Cosmos3DenoisingStage(
            components.transformer, components.omni, components.prompt, show_progress=show_progress
        )
        self.stages: list[PipelineStage] = [
            Cosmos3ImagePreprocessStage(),
            Cosmos3LatentPreparationStage(components.vae, encode_strategy=encode_strategy, dtype=components.dtype),
            Cosmos3TimestepPreparationStage(components.preset, components.device),
            self.denoising,
            Cosmos3DecodingStage(components.vae),
        ]

    def warmup(self, req: Req) -> PipelineOutput:
        """Run a copy of `req` as a warm-up request: same shapes, never profiled, never steps a profiler."""
        return self(dataclasses.replace(req, is_warmup=True))

    def __call__(self, req: Req) -> PipelineOutput:
        req.validate()
        profiler = None
        if req.profile and not req.is_warmup:
            profiler = RequestProfiler(self.profile)
        if profiler and profiler.mode == "all_stages":
            profiler.start()
        stage_ms: dict[str, float] = {}
        trace_path = None
        try:
            with DeviceTimer(self.components.device) as total:
                for stage in self.stages:
                    steps_profiled = profiler is not None and profiler.mode == "steps" and stage is self.denoising
                    if steps_profiled:
                        profiler.start()
                    with timing.stage_timer(self.stage_timer, self.components.device) as timer, \
                            record_function(STAGE_EVENT + stage.name):
                        req = stage(req)
                    if steps_profiled:
                        trace_path = profiler.stop()
                    stage_ms[stage.name] = timer.elapsed_ms
        finally:
            # Also on failure: a profiler left running would capture the next request.
            if profiler is not None and profiler.running:
                trace_path = profiler.stop()
        coverage = None
        if trace_path is not None:
            expected = req.num_inference_steps
            if profiler.expected_steps is not None:
                expected = min(profiler.expected_steps, expected)
            coverage = check_coverage(trace_path, expected, profiler.steps_taken)
        return PipelineOutput(req, stage_ms, total.elapsed_ms, trace_path, coverage)
