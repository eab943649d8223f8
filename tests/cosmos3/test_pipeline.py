"""The end-to-end pipeline and `python -m cosmos3`: per-stage times, outputs, and exit codes."""

from __future__ import annotations

import time

import pytest
import torch

from cosmos3 import timing
from cosmos3.__main__ import main
from cosmos3.errors import InputError
from cosmos3.pipeline import Cosmos3Pipeline
from cosmos3.request import Req
from cosmos3.stages.base import PipelineStage
from cosmos3.timing import DeviceTimer
from tests import tiny

STAGES = ["preprocess", "latent_preparation", "timestep_preparation", "denoising", "decoding"]


@pytest.mark.parametrize("strategy", ["single_frame", "expand"])
def test_i2v_end_to_end(strategy):
    req = Req(height=64, width=96, num_frames=9, image=tiny.image(80, 120), num_inference_steps=2)
    out = Cosmos3Pipeline(tiny.components(), encode_strategy=strategy)(req)
    assert list(out.stage_ms) == STAGES
    assert all(ms > 0 for ms in out.stage_ms.values())
    assert sum(out.stage_ms.values()) <= out.total_ms
    assert out.req.frames.shape == (9, 64, 96, 3) and out.req.frames.dtype == torch.uint8


def test_strategies_give_the_same_video():
    """Same seed, same image: the encode strategy must not change the output."""
    outs = [
        Cosmos3Pipeline(tiny.components(), encode_strategy=s)(
            Req(height=64, width=96, num_frames=9, image=tiny.image(64, 96), num_inference_steps=2)
        ).req.frames
        for s in ("single_frame", "expand")
    ]
    assert torch.equal(*outs)


def test_t2i_end_to_end():
    req = Req(height=64, width=64, num_frames=1, output_kind="image", num_inference_steps=2)
    out = Cosmos3Pipeline(tiny.components())(req)
    assert out.req.frames.shape == (1, 64, 64, 3)


def test_timer_measures_the_block():
    with DeviceTimer(torch.device("cpu")) as t:
        torch.randn(256, 256) @ torch.randn(256, 256)
    assert 0 < t.elapsed_ms < 10_000


def test_cli_runs_and_prints_the_stage_table(tmp_path, capsys):
    code = main(["--preset", "tiny", "--steps", "2", "--num-frames", "5", "--no-progress",
                 "--profile", "--num-profiled-timesteps", "1", "--trace-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for stage in STAGES:
        assert f"| {stage} |" in out
    assert "coverage: OK: 1 of 1" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-frames", "80"], "num_frames: must satisfy"),
        (["--height", "100"], "height: must be a positive multiple of 16"),
        (["--profile", "--num-profiled-timesteps", "0"], "num_profiled_timesteps: must be a positive"),
    ],
)
def test_cli_bad_input_exits_2(argv, message, capsys, tmp_path):
    assert main(["--preset", "tiny", "--trace-dir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_choice_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--strategy", "repeat"])
    assert info.value.code == 2
    assert "invalid choice: 'repeat'" in capsys.readouterr().err


class FakeQueue:
    """A device queue on the CPU: stages enqueue seconds of work and return at once; a sync waits them out."""

    def __init__(self) -> None:
        self.pending_s = 0.0

    def sync(self, device=None) -> None:
        time.sleep(self.pending_s)
        self.pending_s = 0.0


def queue_stages(queue: FakeQueue) -> list[PipelineStage]:
    class Enqueues(PipelineStage):
        name = "enqueues"

        def forward(self, req):
            queue.pending_s += 0.3  # a stage whose kernels are only launched
            return req

    class Waits(PipelineStage):
        name = "waits"

        def forward(self, req):
            queue.sync()  # e.g. a .item() or a copy to the host
            return req

    return [Enqueues(), Waits()]


@pytest.mark.parametrize("kind", ["device", "host"])
def test_an_unsynchronised_stage_timer_charges_queued_work_to_the_stage_that_waits(monkeypatch, kind):
    """upstream's stage timers (host) against ours (device), on a fake queue: the synchronised timer charges the
    work to the stage that queued it; the host timer to the later stage that waited for it."""
    queue = FakeQueue()
    monkeypatch.setattr(timing, "synchronize", queue.sync)
    pipe = Cosmos3Pipeline(tiny.components(), stage_timer=kind)
    pipe.stages = queue_stages(queue)
    out = pipe(Req(height=64, width=96, num_frames=5))
    enqueues, waits = out.stage_ms["enqueues"], out.stage_ms["waits"]
    if kind == "device":
        assert enqueues >= 290 and waits < 150
    else:
        assert enqueues < 150 and waits >= 290
    assert out.total_ms >= 290  # the total is synchronised either way


def test_an_unknown_stage_timer_is_refused():
    with pytest.raises(InputError, match="stage_timer: must be one of"):
        Cosmos3Pipeline(tiny.components(), stage_timer="wall")


@pytest.mark.parametrize(("task", "guidance", "passes"), [("t2v", 4.0, 2), ("i2v", 4.0, 2), ("t2v", 1.0, 1)])
def test_end_to_end_runs_the_cosmos3_transformer_once_per_guidance_pass(task, guidance, passes):
    """The tiny preset's denoiser is diffusers' Cosmos3OmniTransformer, called per step for the conditional
    pass and, with guidance, the unconditional one; each pass holds the prompt's tokens and the video's."""
    from diffusers import Cosmos3OmniTransformer

    c = tiny.components()
    assert type(c.transformer) is Cosmos3OmniTransformer
    seen = []
    hook = c.transformer.register_forward_hook(
        lambda module, args, kwargs, out: seen.append((kwargs["und_len"], kwargs["sequence_length"])), with_kwargs=True)
    image = tiny.image(64, 96) if task == "i2v" else None
    try:
        Cosmos3Pipeline(c)(Req(height=64, width=96, num_frames=9, image=image, num_inference_steps=2,
                               guidance_scale=guidance))
    finally:
        hook.remove()
    assert len(seen) == 2 * passes
    vision_tokens = 3 * (64 // 32) * (96 // 32)  # latent 3 x 4 x 6, in 2x2 patches
    assert seen[0] == (len(c.prompt.cond), len(c.prompt.cond) + vision_tokens)
    if passes == 2:
        assert seen[1] == (len(c.prompt.uncond), len(c.prompt.uncond) + vision_tokens)
