"""Image preprocessing: aspect-preserving cover resize, center crop, range, and bad images."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from cosmos3.errors import InputError
from cosmos3.request import Req
from cosmos3.stages import Cosmos3ImagePreprocessStage
from cosmos3.stages.preprocess import cover_scale_size


def run(**fields) -> Req:
    return Cosmos3ImagePreprocessStage()(Req(**fields))


def save_png(path, array: np.ndarray):
    PIL.Image.fromarray(array).save(path)
    return path


def test_file_is_resized_to_cover_and_center_cropped(tmp_path):
    # 200x100 (W x H), left half black, right half white; target 96x64 -> scale 0.64 -> 128x64, crop 16 each side.
    array = np.zeros((100, 200, 3), np.uint8)
    array[:, 100:] = 255
    req = run(height=64, width=96, num_frames=5, image=save_png(tmp_path / "a.png", array))
    px = req.image_pixels
    assert px.shape == (1, 3, 64, 96) and px.dtype == torch.float32
    assert px.min() >= -1 and px.max() <= 1
    assert px[0, :, :, :40].max() < -0.9 and px[0, :, :, -40:].min() > 0.9  # halves kept, centred
    assert abs(px[0, 0, 32, 47].item() - px[0, 0, 32, 48].item()) > 1.0  # the edge is in the middle


def test_cover_size_keeps_aspect():
    assert cover_scale_size(200, 100, 96, 64) == (128, 64)
    assert cover_scale_size(100, 200, 96, 64) == (96, 192)


def test_tensor_of_the_right_size_passes_through():
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    assert run(height=64, width=96, num_frames=5, image=image).image_pixels is image


def test_tensor_of_another_size_is_resized():
    image = torch.rand(1, 3, 128, 128) * 2 - 1
    assert run(height=64, width=96, num_frames=5, image=image).image_pixels.shape == (1, 3, 64, 96)


def test_no_image_is_a_no_op():
    assert run(height=64, width=96, num_frames=5).image_pixels is None


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.zeros(3, 64, 96), r"image: must have shape \[1, 3, H, W\] \(rank 4, batch 1\)"),
        (torch.zeros(2, 3, 64, 96), r"rank 4, batch 1"),
        (torch.zeros(1, 4, 64, 96), r"image: must have 3 channels"),
        (torch.zeros(1, 3, 64, 96, dtype=torch.uint8), r"image: must be a floating-point tensor"),
        (torch.full((1, 3, 64, 96), 1.5), r"image: values must lie in \[-1, 1\]"),
        (torch.full((1, 3, 64, 96), float("nan")), r"image: must not contain NaN or Inf"),
        (torch.full((1, 3, 64, 96), float("inf")), r"image: must not contain NaN or Inf"),
    ],
)
def test_bad_tensors(image, message):
    with pytest.raises(InputError, match=message):
        run(height=64, width=96, num_frames=5, image=image)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"image: must be a readable image file .*broken.png"):
        run(height=64, width=96, num_frames=5, image=bad)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"image: must be a readable image file"):
        run(height=64, width=96, num_frames=5, image=tmp_path / "absent.png")


def test_image_of_another_type():
    with pytest.raises(InputError, match=r"image: must be a file path, a tensor or None"):
        run(height=64, width=96, num_frames=5, image=[1, 2])
