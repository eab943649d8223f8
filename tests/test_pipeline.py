"""The end-to-end pipeline and `python -m cosmos3`: per-stage times, outputs, and exit codes."""

from __future__ import annotations

import pytest
import torch

from cosmos3.__main__ import main
from cosmos3.pipeline import Cosmos3Pipeline
from cosmos3.request import Req
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
