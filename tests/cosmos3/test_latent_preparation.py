"""Latent preparation: shapes, the frame-0 equivalence of both strategies, determinism, bad input."""

from __future__ import annotations

import pytest
import torch

from cosmos3.equivalence import check_encode_equivalence
from cosmos3.errors import InputError
from cosmos3.request import Req
from cosmos3.stages import Cosmos3LatentPreparationStage
from tests import tiny


def prepare(req: Req, strategy: str = "single_frame", vae=None) -> Req:
    stage = Cosmos3LatentPreparationStage(vae or tiny.vae(), encode_strategy=strategy, dtype=tiny.PRESET.dtype)
    return stage(req)


@pytest.mark.parametrize(("height", "width", "num_frames"), [(64, 96, 1), (48, 64, 5), (64, 96, 17), (32, 112, 33)])
def test_t2v_is_seeded_noise_of_the_latent_shape(height, width, num_frames):
    kind = "image" if num_frames == 1 else "video"
    req = prepare(Req(height=height, width=width, num_frames=num_frames, output_kind=kind))
    assert req.latents.shape == (1, 48, (num_frames - 1) // 4 + 1, height // 16, width // 16)
    assert req.latents.dtype == tiny.PRESET.dtype
    assert req.image_latent is None and req.velocity_mask is None
    assert 0.8 < req.latents.std().item() < 1.2  # N(0, 1)


@pytest.mark.parametrize("strategy", ["single_frame", "expand"])
@pytest.mark.parametrize(("height", "width", "num_frames"), [(48, 64, 5), (64, 96, 9), (32, 48, 17)])
def test_i2v_outputs(strategy, height, width, num_frames):
    req = prepare(tiny.i2v_request(height, width, num_frames), strategy)
    t_lat, h, w = (num_frames - 1) // 4 + 1, height // 16, width // 16
    assert req.latents.shape == (1, 48, t_lat, h, w)
    assert req.image_latent.shape == (1, 48, 1, h, w)
    assert req.velocity_mask.shape == (1, 1, t_lat, 1, 1)
    assert req.latents.dtype == req.image_latent.dtype == tiny.PRESET.dtype
    assert torch.equal(req.latents[:, :, :1], req.image_latent)
    assert req.velocity_mask[0, 0, :, 0, 0].tolist() == [0.0] + [1.0] * (t_lat - 1)
    noise = prepare(Req(height=height, width=width, num_frames=num_frames)).latents
    assert torch.equal(req.latents[:, :, 1:], noise[:, :, 1:])  # noise everywhere but frame 0


@pytest.mark.parametrize("num_frames", [5, 9, 17, 33])
def test_single_frame_matches_expand_bitwise(num_frames):
    report = check_encode_equivalence(tiny.vae(), tiny.i2v_request(num_frames=num_frames), dtype=tiny.PRESET.dtype)
    assert report.bitwise, str(report)
    assert report.equivalent
    assert report.frame0.max_abs_err == 0.0


def test_non_causal_encoder_is_not_equivalent():
    """Negative control: an encoder whose frame 0 sees later frames must fail the check."""
    report = check_encode_equivalence(tiny.look_ahead_vae(), tiny.i2v_request(num_frames=9), dtype=tiny.PRESET.dtype)
    assert not report.equivalent, str(report)
    assert not report.frame0.within_tolerance
    assert report.frame0.max_rel_err > 10 * report.rtol  # far outside, not marginal
    assert str(report).startswith("NOT EQUIVALENT")


def test_tolerance_accepts_small_differences_only():
    report = check_encode_equivalence(
        tiny.look_ahead_vae(), tiny.i2v_request(num_frames=9), dtype=tiny.PRESET.dtype, atol=1e6
    )
    assert report.equivalent and not report.bitwise  # a huge atol admits it; the default does not


@pytest.mark.parametrize("strategy", ["single_frame", "expand"])
def test_same_seed_same_latents(strategy):
    a = prepare(tiny.i2v_request(num_frames=9, seed=7), strategy)
    b = prepare(tiny.i2v_request(num_frames=9, seed=7), strategy)
    c = prepare(tiny.i2v_request(num_frames=9, seed=8), strategy)
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents[:, :, 1:], c.latents[:, :, 1:])


def test_unknown_strategy():
    rule = r"encode_strategy: must be one of \['single_frame', 'expand', 'first_frame_2d'\]"
    with pytest.raises(InputError, match=rule):
        Cosmos3LatentPreparationStage(tiny.vae(), encode_strategy="repeat")


def test_i2v_without_preprocessed_pixels():
    req = Req(height=64, width=96, num_frames=9, image=tiny.image(64, 96))
    with pytest.raises(InputError, match="image_pixels: must be set by Cosmos3ImagePreprocessStage"):
        prepare(req)


def test_preprocessed_pixels_of_the_wrong_size():
    req = tiny.i2v_request(64, 96, 9)
    req.height = 48
    with pytest.raises(InputError, match=r"image_pixels: must be 48x96"):
        prepare(req)


class CopyLog(torch.overrides.TorchFunctionMode):
    """Every Tensor.to that changes device or dtype, with the rank of the tensor it copies, and every expand."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and ("device" in kwargs or any(isinstance(a, torch.device) for a in args[1:])):
            self.calls.append(("to", args[0].dim()))
        elif func is torch.Tensor.expand:
            self.calls.append(("expand", args[0].dim()))
        return func(*args, **kwargs)


@pytest.mark.parametrize(("strategy", "expected"), [
    # upstream's old path: repeated where the image is (the host), then the whole 5-D video copied, once
    ("expand", [("expand", 5), ("to", 5)]),
    # the one-frame paths copy the 4-D image, then make it a one-frame video on the device
    ("single_frame", [("to", 4)]),
])
def test_expand_builds_the_video_on_the_host_before_its_one_copy(strategy, expected):
    """On the CPU host and device are one, so the order of the calls is what tells the paths apart."""
    stage = Cosmos3LatentPreparationStage(tiny.vae(), encode_strategy=strategy, dtype=tiny.PRESET.dtype)
    req = tiny.i2v_request(num_frames=9)
    with CopyLog() as log:
        stage.encode_condition(req)
    copies = [c for c in log.calls if c[0] == "expand" or c == ("to", 5) or c == ("to", 4)]
    assert copies[:len(expected)] == expected, log.calls
