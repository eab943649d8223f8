"""End-to-end I2V requests per encode strategy, with device-synchronised per-stage times."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import PIL.Image
import pytest
import torch

from bench.harness import RoundPolicy, RunControls, equivalence_for, measure, record_case
from cosmos3.components import Components, build_transformer, text_context
from cosmos3.pipeline import Cosmos3Pipeline
from cosmos3.request import Req
from cosmos3.stages import Cosmos3ImagePreprocessStage

# No profiled rounds: a whole request under the profiler costs a minute of GPU time per case.
# One warm-up request is a whole denoise loop plus a decode: every kernel has run by its end
# (the VAE was already warm from the latent-prep cases). Min 5 timed rounds keep the gate's power.
E2E_ROUNDS = RoundPolicy(warmup_rounds=1, min_rounds=5, max_rounds=10)


@pytest.fixture(scope="module")
def components(preset, device, vae, weights_dir):
    transformer = build_transformer(preset, device, weights_dir=weights_dir)
    text = text_context(preset.dit.text_seq_len, transformer.config.text_dim, device, preset.dtype)
    yield Components(preset, device, preset.dtype, vae, transformer, text)
    del transformer, text
    if device.type == "cuda":
        torch.cuda.empty_cache()


@pytest.fixture
def image_path(tmp_path_factory, case):
    """A seeded random RGB image larger than the output, so preprocessing really resizes and crops."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(case.height * 5 // 4, case.width * 5 // 4, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("e2e") / "condition.png"
    PIL.Image.fromarray(pixels).save(path)
    return path


@pytest.mark.cases("e2e")
def test_e2e(benchmark, case, components, grid, image_path, device):
    strategy = RunControls.from_env().strategy_for(case.strategy)  # a negative control may revert it
    pipeline = Cosmos3Pipeline(components, encode_strategy=strategy)

    def request() -> Req:
        return Req(
            height=case.height,
            width=case.width,
            num_frames=case.num_frames,
            image=image_path,
            num_inference_steps=grid.e2e_steps,
        )

    stage_samples: dict[str, list[float]] = defaultdict(list)

    def keep_stage_times(output) -> None:
        for stage, ms in output.stage_ms.items():
            stage_samples[stage].append(ms)

    record_case(benchmark, spec=case, num_inference_steps=grid.e2e_steps)
    measure(benchmark, lambda: pipeline(request()), device=device, case_name=case.name,
            policy=E2E_ROUNDS, on_round=keep_stage_times, profile=False)
    record_case(benchmark, stage_samples_ms={k: tuple(v) for k, v in stage_samples.items()})
    # As in latent_prep: an optimisation must keep the output, checked on the same request (its
    # preprocessed image) outside the timed rounds.
    req = Cosmos3ImagePreprocessStage()(request())
    equivalence = equivalence_for(components.vae, req, case.strategy, strategy, components.dtype)
    if equivalence is not None:
        record_case(benchmark, equivalence=equivalence)
