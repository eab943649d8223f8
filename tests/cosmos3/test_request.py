"""Request validation: every bad field gets an error naming the field and the rule."""

from __future__ import annotations

import math

import pytest
import torch

from cosmos3.errors import InputError
from cosmos3.request import Req, latent_frames


def test_defaults_are_cosmos3s():
    req = Req()
    req.validate()
    assert (req.height, req.width, req.num_frames, req.fps) == (720, 1280, 81, 24)
    assert (req.num_inference_steps, req.guidance_scale) == (35, 4.0)
    assert req.latent_shape == (1, 48, 21, 45, 80)


@pytest.mark.parametrize(("n", "t"), [(1, 1), (5, 2), (33, 9), (81, 21), (121, 31)])
def test_latent_frames(n, t):
    assert latent_frames(n) == t


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"height": 100}, r"height: must be a positive multiple of 16 \(got 100\)"),
        ({"height": 0}, r"height: must be a positive multiple of 16 \(got 0\)"),
        ({"width": -16}, r"width: must be a positive multiple of 16 \(got -16\)"),
        ({"width": 720.0}, r"width: must be a positive multiple of 16"),
        ({"num_frames": 0}, r"num_frames: must be an integer >= 1"),
        ({"num_frames": 80}, r"num_frames: must satisfy \(num_frames - 1\) % 4 == 0; nearest valid values are 77 and 81"),
        ({"num_frames": 3}, r"nearest valid values are 1 and 5 \(got 3\)"),
        ({"output_kind": "gif"}, r"output_kind: must be 'video' or 'image'"),
        ({"output_kind": "image"}, r"num_frames: must be 1 when output_kind is 'image'"),
        ({"output_kind": "image", "num_frames": 1, "image": "x.png"}, r"image: a conditioning image needs"),
        ({"num_inference_steps": 0}, r"num_inference_steps: must be an integer >= 1"),
        ({"guidance_scale": math.nan}, r"guidance_scale: must be a finite number >= 0"),
        ({"fps": 0}, r"fps: must be an integer >= 1"),
        ({"seed": -1}, r"seed: must be an integer >= 0"),
        ({"seed": 2**64}, r"seed: must be an integer >= 0 and <= 2\*\*64 - 1"),
        ({"height": 4112}, r"height: must be at most 4096 pixels \(got 4112\)"),
        ({"num_frames": 1205}, r"num_frames: must be at most 1201 \(got 1205\)"),
        (
            {"height": 4096, "width": 4096, "num_frames": 17},
            r"num_frames: height \* width \* num_frames must be at most 223,027,200 pixels .* so at most 13 frames",
        ),
    ],
)
def test_bad_fields(fields, message):
    with pytest.raises(InputError, match=message):
        Req(**fields).validate()


def test_error_names_field_and_rule():
    with pytest.raises(InputError) as info:
        Req(height=100).validate()
    assert info.value.field == "height"
    assert "multiple of 16" in info.value.rule
    assert isinstance(info.value, ValueError)


def test_i2v_and_t2i_kinds():
    assert Req(image="a.png").is_i2v
    assert not Req().is_i2v
    Req(num_frames=1, output_kind="image").validate()


def test_the_largest_allowed_sizes_pass():
    Req(height=720, width=1280, num_frames=241).validate()  # exactly MAX_VIDEO_PIXELS
    Req(height=4096, width=4096, num_frames=13).validate()
    Req(height=16, width=16, num_frames=1201, seed=2**64 - 1).validate()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # bool is an int in Python, never a number in a request
        ({"guidance_scale": True}, r"guidance_scale: must be a finite number >= 0 \(got True\)"),
        ({"seed": True}, r"seed: must be an integer >= 0"),
        ({"num_inference_steps": True}, r"num_inference_steps: must be an integer >= 1"),
        ({"fps": True}, r"fps: must be an integer >= 1"),
        ({"height": True}, r"height: must be a positive multiple of 16"),
        ({"num_frames": True}, r"num_frames: must be an integer >= 1"),
        ({"guidance_scale": "4"}, r"guidance_scale: must be a finite number >= 0 \(got '4'\)"),
        ({"guidance_scale": None}, r"guidance_scale: must be a finite number >= 0 \(got None\)"),
        ({"guidance_scale": math.inf}, r"guidance_scale: must be a finite number >= 0"),
        ({"seed": 1.0}, r"seed: must be an integer"),
        ({"output_kind": ["video"]}, r"output_kind: must be 'video' or 'image'"),
        ({"profile": 1}, r"profile: must be True or False"),
        ({"image": 3}, r"image: must be a file path, a tensor or None"),
        ({"image": ""}, r"image: must be a non-empty file path"),
        ({"image": torch.zeros(1, 3, 0, 0)}, r"image: must not be empty: H and W must be >= 1 \(got \(1, 3, 0, 0\)\)"),
        ({"image": torch.zeros(1, 3, 16, 0)}, r"image: must not be empty"),
        ({"image": torch.zeros(1, 4, 16, 16)}, r"image: must have 3 channels"),
        ({"image": torch.zeros(3, 16, 16)}, r"image: must have shape \[1, 3, H, W\]"),
        ({"image": torch.zeros(1, 3, 16, 16, dtype=torch.uint8)}, r"image: must be a floating-point tensor"),
    ],
)
def test_the_python_api_checks_types_as_the_command_line_does(fields, message):
    with pytest.raises(InputError, match=message) as info:
        Req(**fields).validate()
    assert info.value.field == next(iter(fields))


@pytest.mark.parametrize(("image", "message"), [
    (torch.full((1, 3, 16, 16), math.nan), r"image: must not contain NaN or Inf"),
    (torch.full((1, 3, 16, 16), 2.0), r"image: values must lie in \[-1, 1\]"),
])
def test_an_image_tensors_values_are_checked_by_the_stage_that_reads_them(image, message):
    """Req.validate runs before every stage, so it checks the tensor's metadata only (reading the values is a
    pass over the image and two host-device syncs, which would land in every timed stage); preprocessing, the
    first stage that reads the pixels, checks them and names the field."""
    from cosmos3.stages import Cosmos3ImagePreprocessStage

    req = Req(height=16, width=16, num_frames=5, image=image)
    req.validate()
    with pytest.raises(InputError, match=message) as info:
        Cosmos3ImagePreprocessStage()(req)
    assert info.value.field == "image"


def test_validate_never_reads_an_image_tensors_values():
    Req(image=torch.empty(1, 3, 16, 16, device="meta")).validate()  # a meta tensor has no values to read


def test_a_good_image_tensor_passes():
    Req(image=torch.zeros(1, 3, 16, 16)).validate()
    Req(image=torch.ones(1, 3, 720, 1280)).validate()
