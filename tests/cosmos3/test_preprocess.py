"""Image preprocessing: modes and value ranges, aspect-preserving cover resize, center crop, and bad images."""

from __future__ import annotations

import math
import struct
import warnings
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

from cosmos3.errors import InputError
from cosmos3.request import Req
from cosmos3.stages import Cosmos3ImagePreprocessStage
from cosmos3.stages.preprocess import CropWarning, cover_scale_size, load_image, resize_cover_crop, to_rgb8


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


# -- image files: modes, value ranges, sizes ---------------------------------------------------


def load_array(path) -> np.ndarray:
    return np.asarray(load_image(path)).astype(int)


def test_16_bit_png_keeps_its_gradient(tmp_path):
    """PIL's convert('RGB') clips 16-bit values to 255 (99% white); we divide by 65535."""
    gradient = np.linspace(0, 65535, 64 * 96).reshape(64, 96).astype(np.uint16)
    PIL.Image.fromarray(gradient).save(tmp_path / "g16.png")
    assert PIL.Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = load_array(tmp_path / "g16.png")
    assert (rgb == 255).mean() < 0.5
    assert np.abs(rgb[..., 0] - np.round(gradient / 65535 * 255)).max() == 0
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_16_bit_big_endian_tiff(tmp_path):
    gradient = np.linspace(0, 65535, 64 * 96).reshape(64, 96).astype(">u2")
    PIL.Image.frombytes("I;16B", (96, 64), gradient.tobytes()).save(tmp_path / "g16b.tif")
    rgb = load_array(tmp_path / "g16b.tif")
    assert np.abs(rgb[..., 0] - np.round(gradient.astype(float) / 65535 * 255)).max() == 0


def test_32_bit_integer_image_within_16_bits_is_scaled(tmp_path):
    values = np.linspace(0, 65535, 64 * 96).reshape(64, 96).astype(np.int32)
    PIL.Image.fromarray(values, mode="I").save(tmp_path / "i32.tif")
    rgb = load_array(tmp_path / "i32.tif")
    assert (rgb == 255).mean() < 0.5 and rgb.min() == 0 and rgb.max() == 255


def test_32_bit_integer_image_beyond_16_bits_is_refused(tmp_path):
    PIL.Image.fromarray(np.full((64, 96), 100_000, np.int32), mode="I").save(tmp_path / "i32.tif")
    with pytest.raises(
        InputError, match=r"image: a 32-bit integer \(I\) image must hold 16-bit values in \[0, 65535\]"
    ):
        load_image(tmp_path / "i32.tif")


def test_float_tiff_in_0_1_keeps_its_gradient(tmp_path):
    """PIL's convert('RGB') truncates [0, 1] floats to 0 or 1 (a black image); we scale by 255."""
    gradient = np.linspace(0, 1, 64 * 96, dtype=np.float32).reshape(64, 96)
    PIL.Image.fromarray(gradient, mode="F").save(tmp_path / "f.tif")
    rgb = load_array(tmp_path / "f.tif")
    assert (rgb == 255).mean() < 0.5 and (rgb == 0).mean() < 0.5
    assert np.abs(rgb[..., 0] - np.round(gradient * 255)).max() == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [(7.0, r"must hold values in \[0, 1\]"), (-0.5, r"\[0, 1\]"), (math.nan, "must not contain NaN or Inf")],
)
def test_float_tiff_outside_0_1_is_refused(tmp_path, value, message):
    PIL.Image.fromarray(np.full((64, 96), value, np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(InputError, match=r"image: .*" + message):
        load_image(tmp_path / "f.tif")


def test_transparency_is_composited_on_black(tmp_path):
    PIL.Image.new("RGBA", (8, 8), (255, 255, 255, 128)).save(tmp_path / "half.png")
    PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    PIL.Image.new("LA", (8, 8), (200, 255)).save(tmp_path / "la.png")
    assert (load_array(tmp_path / "half.png") == 128).all()
    assert (load_array(tmp_path / "clear.png") == 0).all()
    assert (load_array(tmp_path / "la.png") == 200).all()


def test_palette_with_a_transparent_entry(tmp_path):
    img = PIL.Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    img.paste(2, (0, 0, 4, 8))
    img.save(tmp_path / "p.png", transparency=1)  # palette entry 1 (red) is transparent
    rgb = load_array(tmp_path / "p.png")
    assert (rgb[:, :4] == (0, 255, 0)).all()  # opaque green
    assert (rgb[:, 4:] == 0).all()  # transparent red on black


@pytest.mark.parametrize(
    ("mode", "fill", "expected"),
    [("1", 1, (255, 255, 255)), ("L", 77, (77, 77, 77)), ("CMYK", (0, 255, 0, 0), (255, 0, 255))],
)
def test_8_bit_modes(tmp_path, mode, fill, expected):
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    PIL.Image.new(mode, (8, 8), fill).save(path)
    assert (np.abs(load_array(path) - expected) <= 1).all()


def test_unsupported_mode_is_refused_by_name():
    with pytest.raises(InputError, match=r"image: mode 'La' is not supported; use 8-bit RGB"):
        to_rgb8(PIL.Image.new("La", (8, 8)))


def test_exif_orientation_is_applied(tmp_path):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    PIL.Image.new("RGB", (40, 20)).save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def png_header_only(path, width: int, height: int):
    """A PNG whose header claims width x height; PIL reads the size without the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(("width", "height"), [(8000, 8000), (100_000, 100_000)])
def test_too_many_pixels_is_refused_before_decoding(tmp_path, width, height):
    with pytest.raises(InputError, match=r"image: must have at most 33,177,600 pixels \(8K UHD\)"):
        load_image(png_header_only(tmp_path / "big.png", width, height))


def test_truncated_file_is_refused(tmp_path):
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"image: must be a complete, readable image file"):
        load_image(tmp_path / "a.png")


# -- aspect ratio: the crop ----------------------------------------------------------------------


def test_heavy_crop_warns(tmp_path):
    path = save_png(tmp_path / "wide.png", np.zeros((30, 400, 3), np.uint8))
    with pytest.warns(CropWarning, match=r"image: the center crop to 96x64 keeps only 11% of the 400x30 image"):
        run(height=64, width=96, num_frames=5, image=path)
    with pytest.warns(CropWarning, match="keeps only"):
        run(height=64, width=96, num_frames=5, image=torch.zeros(1, 3, 30, 400))


def test_moderate_crop_does_not_warn(tmp_path):
    path = save_png(tmp_path / "a.png", np.zeros((100, 200, 3), np.uint8))  # keeps 75%
    with warnings.catch_warnings():
        warnings.simplefilter("error", CropWarning)
        run(height=64, width=96, num_frames=5, image=path)


def test_one_step_resize_matches_resize_then_crop():
    """The box resize gives the pixels of the two-step cover resize and crop, within one level."""
    rng = np.random.default_rng(0)
    for src_w, src_h in ((640, 480), (97, 1000), (50, 30)):
        img = PIL.Image.fromarray(rng.integers(0, 256, (src_h, src_w, 3), np.uint8))
        new_w, new_h = cover_scale_size(src_w, src_h, 96, 64)
        left, top = (new_w - 96) // 2, (new_h - 64) // 2
        two_step = img.resize((new_w, new_h), PIL.Image.Resampling.LANCZOS).crop((left, top, left + 96, top + 64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CropWarning)
            one_step = resize_cover_crop(img, 96, 64)
        assert np.abs(np.asarray(one_step).astype(int) - np.asarray(two_step).astype(int)).max() <= 1


def test_extreme_aspect_ratio_needs_no_huge_intermediate():
    """1 x 30000 to 96 x 64: a two-step cover resize would build a 96 x 2,880,000 image first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CropWarning)
        assert resize_cover_crop(PIL.Image.new("RGB", (1, 30_000)), 96, 64).size == (96, 64)
