"""`python -m cosmos3` on bad input: exit 2, a message naming the field and the rule, nothing created or built."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import cosmos3.__main__ as cli
from cosmos3.components import build_components, build_transformer, build_vae
from cosmos3.request import MAX_NUM_FRAMES, MAX_SIDE_PX
from cosmos3.stages.preprocess import CropWarning
from tests import tiny

BASE = ["--preset", "tiny", "--no-progress"]


class Built(Exception):
    """Raised by the stand-in build_components: validation passed and models would be built now."""


@pytest.fixture(autouse=True)
def no_models(monkeypatch):
    """Any call to build_components fails the test unless it expects `Built`: errors must come first."""

    def refuse(*args, **kwargs):
        raise Built

    monkeypatch.setattr(cli, "build_components", refuse)


@pytest.fixture
def trace_dir(tmp_path) -> Path:
    return tmp_path / "traces"


def fails(argv: list[str], capsys, field: str, trace_dir: Path | None = None) -> str:
    """Run the CLI in-process; it must exit 2 naming `field`, without a traceback or a trace folder."""
    extra = [] if trace_dir is None else ["--trace-dir", str(trace_dir)]
    code = cli.main([*BASE, *extra, *argv])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    assert f"error: {field}: " in err, err
    assert "Traceback" not in err
    if trace_dir is not None:
        assert not trace_dir.exists()
    return err


def passes_validation(argv: list[str], capsys) -> str:
    """Validation accepts `argv`: the run goes on to build the models (here: raises Built)."""
    with pytest.raises(Built):
        cli.main([*BASE, *argv])
    return capsys.readouterr().err


# -- zero is a value ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "field"),
    [("--height", "height"), ("--width", "width"), ("--num-frames", "num_frames"), ("--steps", "num_inference_steps")],
)
def test_zero_is_checked_not_replaced_by_the_default(option, field, capsys, trace_dir):
    err = fails([option, "0"], capsys, field, trace_dir)
    assert "(got 0)" in err


def test_the_option_is_named_where_the_field_has_another_name(capsys, trace_dir):
    assert "; set by --steps" in fails(["--steps", "0"], capsys, "num_inference_steps", trace_dir)
    assert "; set by --dit-layers" in fails(["--dit-layers", "0"], capsys, "dit_num_layers", trace_dir)


# -- every option has a rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "field", "rule"),
    [
        (["--height", "100"], "height", "must be a positive multiple of 16"),
        (["--height", "-16"], "height", "must be a positive multiple of 16"),
        (["--width", str(MAX_SIDE_PX + 16)], "width", f"must be at most {MAX_SIDE_PX} pixels"),
        (["--height", "65536", "--task", "t2i"], "height", "must be at most"),
        (["--num-frames", "400001"], "num_frames", f"must be at most {MAX_NUM_FRAMES}"),
        (["--num-frames", "-3"], "num_frames", "must be an integer >= 1"),
        (["--height", "4096", "--width", "4096", "--num-frames", "17"], "num_frames", "height * width * num_frames"),
        (["--task", "t2i", "--num-frames", "5"], "num_frames", "must be 1 when output_kind is 'image'"),
        (["--steps", "-1"], "num_inference_steps", "must be an integer >= 1"),
        (["--steps", "101"], "num_inference_steps", "must be at most 100 for video output"),
        (["--steps", "1000000000"], "num_inference_steps", "must be at most 100 for video output"),
        (["--task", "t2i", "--steps", "334"], "num_inference_steps", "must be at most 333 for image output"),
        (["--seed", "-1"], "seed", "must be an integer >= 0"),
        (["--seed", str(2**64)], "seed", "<= 2**64 - 1"),
        (["--guidance-scale", "nan"], "guidance_scale", "must be a finite number >= 0"),
        (["--guidance-scale", "inf"], "guidance_scale", "must be a finite number >= 0"),
        (["--guidance-scale", "-0.5"], "guidance_scale", "must be a finite number >= 0"),
        (["--dit-layers", "0"], "dit_num_layers", "must be an integer in [1, 60]"),
        (["--dit-layers", "-3"], "dit_num_layers", "must be an integer in [1, 60]"),
        (["--dit-layers", "100000"], "dit_num_layers", "must be an integer in [1, 60]"),
        (["--profile", "--num-profiled-timesteps", "0"], "num_profiled_timesteps", "must be a positive step count"),
        (["--num-profiled-timesteps", "-5"], "num_profiled_timesteps", "must be a positive step count"),
        (["--device", "foo"], "device", "must be 'cpu', 'cuda' or 'cuda:N'"),
        (["--device", ""], "device", "must be 'cpu', 'cuda' or 'cuda:N'"),
        (["--device", "meta"], "device", "must be 'cpu', 'cuda' or 'cuda:N'"),
        (["--device", "cpu:1"], "device", "must be 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_bad_option_exits_2_before_anything_is_built(argv, field, rule, capsys, trace_dir):
    assert rule in fails(argv, capsys, field, trace_dir)


def test_cuda_without_cuda(monkeypatch, capsys, trace_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs CUDA, which this machine does not have" in fails(["--device", "cuda"], capsys, "device", trace_dir)


def test_cuda_device_index_out_of_range(monkeypatch, capsys, trace_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = fails(["--device", "cuda:7"], capsys, "device", trace_dir)
    assert "must name one of this machine's 1 CUDA devices (cuda:0 to cuda:0) (got 'cuda:7')" in err
    passes_validation(["--device", "cuda:0", "--trace-dir", str(trace_dir)], capsys)


def test_defaults_pass_validation(capsys, trace_dir):
    """Positive control for the tests above: the same command without the bad option reaches the build."""
    passes_validation(["--trace-dir", str(trace_dir)], capsys)
    passes_validation(["--task", "t2i", "--steps", "333"], capsys)
    passes_validation(["--task", "t2v", "--steps", "100", "--seed", str(2**64 - 1), "--dit-layers", "60"], capsys)


# -- the trace folder --------------------------------------------------------------------------


def test_trace_dir_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "must be a folder, and this is a file" in fails(["--trace-dir", str(afile)], capsys, "trace_dir")
    err = fails(["--trace-dir", str(afile / "sub")], capsys, "trace_dir")
    assert f"must be a folder that can be created, but {afile} is a file" in err


def test_trace_dir_that_is_not_writable(monkeypatch, capsys, trace_dir):
    monkeypatch.setattr("cosmos3.paths.os.access", lambda path, mode: False)
    assert "must be a folder we can write to" in fails([], capsys, "trace_dir", trace_dir)


def test_trace_dir_that_cannot_be_created(monkeypatch, capsys, trace_dir):
    """Where the checks cannot tell (root on /proc, a read-only mount) mkdir fails, before any build."""

    def mkdir(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert "must be a folder that can be created (Permission denied)" in fails([], capsys, "trace_dir", trace_dir)


def test_an_unused_default_trace_dir_is_not_checked(monkeypatch, tmp_path, capsys):
    """With --image and no --profile nothing is written, so a read-only working folder is fine."""
    monkeypatch.setattr("cosmos3.paths.os.access", lambda path, mode: False)
    passes_validation(["--image", str(png(tmp_path / "a.png", 96, 64))], capsys)


# -- the weights folder ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    build_vae(tiny.PRESET, "cpu").save_pretrained(folder / "vae")
    build_transformer(tiny.PRESET, "cpu").save_pretrained(folder / "transformer")
    return folder


def copy_weights(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        if path.is_file():
            (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / path.relative_to(src)).write_bytes(path.read_bytes())
    return dst


SAFETENSORS = "diffusion_pytorch_model.safetensors"


def spoil(weights: Path, how: str) -> Path:
    """A copy of good weights, broken in one way."""
    if how == "absent":
        return weights.with_name("absent")
    if how == "no transformer config":
        (weights / "transformer" / "config.json").unlink()
    elif how == "no vae weights":
        (weights / "vae" / SAFETENSORS).unlink()
    elif how == "truncated weights":
        data = (weights / "vae" / SAFETENSORS).read_bytes()
        (weights / "vae" / SAFETENSORS).write_bytes(data[: len(data) // 2])
    elif how == "garbage weights":
        (weights / "transformer" / SAFETENSORS).write_bytes(b"garbage" * 9)
    elif how == "config not JSON":
        (weights / "vae" / "config.json").write_text("{not json")
    elif how == "config not an object":
        (weights / "vae" / "config.json").write_text("[1]")
    return weights


@pytest.mark.parametrize(
    ("how", "rule"),
    [
        ("absent", "must be an existing folder"),
        ("no transformer config", "must be a local diffusers folder with transformer/config.json"),
        ("no vae weights", "vae/ must hold the weights"),
        ("truncated weights", f"vae/{SAFETENSORS} must be a complete safetensors file"),
        ("garbage weights", f"transformer/{SAFETENSORS} must be a complete safetensors file"),
        ("config not JSON", "vae/config.json must be a readable JSON file"),
        ("config not an object", "vae/config.json must hold a JSON object"),
    ],
)
def test_weights_dir_without_usable_weights(how, rule, good_weights, tmp_path, capsys, trace_dir):
    weights = spoil(copy_weights(good_weights, tmp_path / "w"), how)
    assert rule in fails(["--weights-dir", str(weights)], capsys, "weights_dir", trace_dir)


def test_weights_whose_config_disagrees_fail_while_loading_with_exit_2(
    good_weights, tmp_path, monkeypatch, capsys, trace_dir
):
    """Only loading finds this one: the real build runs and its error is still an InputError."""
    weights = copy_weights(good_weights, tmp_path / "w")
    config = json.loads((weights / "vae" / "config.json").read_text())
    (weights / "vae" / "config.json").write_text(json.dumps({**config, "base_dim": 32}))
    monkeypatch.setattr(cli, "build_components", build_components)
    argv = ["--weights-dir", str(weights), "--image", str(png(tmp_path / "a.png", 96, 64))]
    assert "vae/ must load with diffusers' from_pretrained" in fails(argv, capsys, "weights_dir", trace_dir)


def test_good_weights_pass_validation(good_weights, capsys):
    passes_validation(["--weights-dir", str(good_weights), "--task", "t2v"], capsys)


# -- the conditioning image --------------------------------------------------------------------


def png(path: Path, width: int, height: int) -> Path:
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)).save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height in its header: decoders read its size without its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def float_tiff(path: Path, values: np.ndarray) -> Path:
    PIL.Image.fromarray(values.astype(np.float32), mode="F").save(path)
    return path


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (lambda d: d / "absent.png", "must be a readable image file (FileNotFoundError)"),
        (lambda d: d, "must be a readable image file (IsADirectoryError)"),
        (lambda d: (d / "t.png").write_text("hello") or d / "t.png", "must be a readable image file"),
        (lambda d: png_header_only(d / "z.png", 0, 64), "must be a readable image file"),
        (lambda d: png_header_only(d / "h.png", 8000, 8000), "must have at most 33,177,600 pixels (8K UHD)"),
        (lambda d: png_header_only(d / "b.png", 100_000, 100_000), "must have at most 33,177,600 pixels"),
        (lambda d: png_header_only(d / "c.png", 96, 64), "must be a complete, readable image file"),
        (lambda d: float_tiff(d / "f.tif", np.full((64, 96), 7.0)), "must hold values in [0, 1]"),
        (lambda d: float_tiff(d / "n.tif", np.full((64, 96), math.nan)), "must not contain NaN or Inf"),
    ],
)
def test_bad_image_file_exits_2_before_anything_is_created(make, rule, tmp_path, capsys, trace_dir):
    image = make(tmp_path)
    assert rule in fails(["--image", str(image)], capsys, "image", trace_dir)


def test_image_with_a_task_that_takes_none(tmp_path, capsys, trace_dir):
    image = str(png(tmp_path / "a.png", 96, 64))
    for task in ("t2v", "t2i"):
        assert "only --task i2v takes a conditioning image" in fails(
            ["--task", task, "--image", image], capsys, "image", trace_dir
        )


def test_heavy_crop_is_reported_once_before_the_build(tmp_path, capsys, trace_dir):
    err = passes_validation(
        ["--image", str(png(tmp_path / "wide.png", 400, 30)), "--trace-dir", str(trace_dir)], capsys
    )
    assert err.count("warning: image: the center crop to 96x64 keeps only 11% of the 400x30 image") == 1
    assert not trace_dir.exists()  # --image and no --profile: nothing to write


def test_a_16_bit_wide_image_runs_end_to_end_warned_once(tmp_path, monkeypatch, capsys, recwarn):
    """Positive control with the real tiny models: a 16-bit PNG is accepted, its heavy crop is
    reported once (not again by the warm-up and the request), and the run exits 0."""
    monkeypatch.setattr(cli, "build_components", build_components)
    gradient = np.linspace(0, 65535, 30 * 400).reshape(30, 400).astype(np.uint16)
    PIL.Image.fromarray(gradient).save(tmp_path / "g16.png")
    argv = [
        "--image",
        str(tmp_path / "g16.png"),
        "--height",
        "32",
        "--width",
        "48",
        "--num-frames",
        "1",
        "--steps",
        "1",
    ]
    code = cli.main([*BASE, *argv])
    captured = capsys.readouterr()
    assert code == cli.EXIT_OK, captured.err
    assert "| preprocess |" in captured.out
    assert captured.err.count("warning: image: the center crop to 48x32 keeps only") == 1
    assert not [w for w in recwarn if issubclass(w.category, CropWarning)]  # none escaped the CLI
