"""first_frame_2d: a differential test against the fp32 3D encoder (the oracle), the structure guard, shared weights."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import sys

import pytest
import torch
from diffusers import AutoencoderKLWan
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bench.core.records import EquivalenceRecord
from bench.measure import harness
from cosmos3.components import cast_like_from_pretrained
from cosmos3.equivalence import (
    ORACLE_FACTOR,
    ORACLE_FP32_RTOL,
    ORACLE_MAX_FACTOR,
    check_against_oracle,
    compare_tensors,
    fp32_oracle,
    rms_rel_err,
)
from cosmos3.errors import InputError
from cosmos3.first_frame import (
    FirstFrameEncoder,
    UnsupportedEncoder,
    check_supported,
    encode_first_frame_2d,
    first_frame_weight,
)
from cosmos3.request import Req
from cosmos3.stages import Cosmos3LatentPreparationStage
from cosmos3.vae import encode_latents
from tests import tiny
from tests.repo import REPO

# A mid-size Wan 2.2-shaped encoder (residual, patch 2, 16x spatial), wider and deeper than tiny.
MID_CONFIG = {
    "base_dim": 32, "decoder_base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "is_residual": True, "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
    "latents_mean": [0.1 * (i % 5 - 2) for i in range(16)], "latents_std": [0.5 + 0.1 * (i % 3) for i in range(16)],
}  # fmt: skip
# The Wan 2.1 layout (no residual down blocks, no patchify, 8x spatial): the same mapping covers it.
WAN21_CONFIG = {"base_dim": 16, "decoder_base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1}


@functools.cache
def seeded_vae(kind: str) -> AutoencoderKLWan:
    if kind == "tiny":
        return tiny.vae()
    config = {"mid": MID_CONFIG, "wan21": WAN21_CONFIG}[kind]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return AutoencoderKLWan(**config).eval().requires_grad_(False)


@functools.cache
def bf16_vae(kind: str) -> AutoencoderKLWan:
    return cast_like_from_pretrained(copy.deepcopy(seeded_vae(kind)), torch.bfloat16)


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return harness.smooth_image(width, height, seed=seed)


def images(height: int, width: int, count: int = 3) -> dict[str, torch.Tensor]:
    """Seeded random images and a smooth photo-like one (always included)."""
    out = {f"random-{seed}": tiny.image(height, width, seed=seed) for seed in range(count - 1)}
    return {**out, "smooth": smooth_image(height, width, seed=0)}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return compare_tensors("latents", got, want, atol=0.0, rtol=0.0).max_rel_err


# --- fp32: the 2D path is the 3D encoder, up to the order of fp32 sums ------------------------------------------


@pytest.mark.parametrize(
    ("kind", "height", "width", "count"),
    [("tiny", 64, 96, 3), ("tiny", 32, 80, 2), ("mid", 64, 96, 3), ("wan21", 32, 48, 2)],
)
def test_fp32_matches_the_3d_encoder(kind, height, width, count):
    vae = seeded_vae(kind)
    for name, pixels in images(height, width, count).items():
        want = encode_latents(vae, pixels.unsqueeze(2))
        got = encode_first_frame_2d(vae, pixels)
        assert got.shape == want.shape == (1, vae.config.z_dim, 1, *want.shape[-2:])
        assert rel_err(got, want) <= ORACLE_FP32_RTOL, name


def test_first_tap_instead_of_last_fails():
    """Negative control: the first temporal tap (it only ever sees the zero padding on frame 0) is far off."""
    for kind in ("tiny", "mid"):
        vae = seeded_vae(kind)
        for name, pixels in images(32, 48, count=2).items():
            want = encode_latents(vae, pixels.unsqueeze(2))
            err = rel_err(encode_first_frame_2d(vae, pixels, _tap=0), want)
            assert err > 1e4 * ORACLE_FP32_RTOL, (kind, name, err)  # not marginal: > 0.1


def test_self_check_refuses_the_first_tap():
    with pytest.raises(UnsupportedEncoder, match="self-check: the 2D encode"):
        FirstFrameEncoder(tiny.vae(), _tap=0)
    assert FirstFrameEncoder(tiny.vae()).self_check() <= ORACLE_FP32_RTOL


# --- shared weights ---------------------------------------------------------------------------------------------


class _ConvWeights(TorchDispatchMode):
    """Records the storage of the kernel of every convolution that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten._convolution):
            self.storages.append(args[1].untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))


def test_kernels_are_views_of_the_vae_weights():
    vae = tiny.vae()
    convs = [m for m in vae.encoder.modules() if isinstance(m, nn.Conv3d)] + [vae.quant_conv]
    for conv in convs:
        w2d = first_frame_weight(conv)
        assert w2d._base is conv.weight
        assert w2d.untyped_storage().data_ptr() == conv.weight.untyped_storage().data_ptr()
        assert torch.equal(w2d, conv.weight[:, :, -1])
    # Every convolution the 2D encode runs reads its kernel from the VAE's own parameter storage.
    param_storages = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    encoder = FirstFrameEncoder(vae, self_check=False)
    with _ConvWeights() as seen:
        encoder(tiny.image(32, 48))
    assert seen.storages and set(seen.storages) <= param_storages
    assert encoder.net.packed == {}


def test_in_place_weight_change_is_seen():
    """No copy: scaling the VAE's kernels in place changes the 2D encode exactly as it changes the 3D one."""
    vae = copy.deepcopy(tiny.vae())
    encoder = FirstFrameEncoder(vae, self_check=False)
    pixels = tiny.image(32, 48)
    before = encoder(pixels)
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(1.5)
    after = encoder(pixels)
    assert rel_err(after, before) > 1e-3
    assert rel_err(after, encode_latents(vae, pixels.unsqueeze(2))) <= ORACLE_FP32_RTOL


# --- bf16: no less accurate than the 3D path, against the fp32 oracle -------------------------------------------


@pytest.mark.parametrize("kind", ["tiny", "mid"])
def test_bf16_no_less_accurate_than_the_3d_path(kind):
    """Against the fp32 oracle (the same weights, upcast), the bf16 2D path's error is within the rule's factors
    of the bf16 3D path's; the first-tap control is not."""
    vae = bf16_vae(kind)
    oracle = fp32_oracle(vae)
    for name, pixels in images(64, 96, count=3 if kind == "tiny" else 2).items():
        want = encode_latents(oracle, pixels.unsqueeze(2))
        single_frame = encode_latents(vae, pixels.unsqueeze(2))
        got = encode_first_frame_2d(vae, pixels)
        assert got.dtype == torch.bfloat16
        ref_rms, ref_max = rms_rel_err(single_frame, want), rel_err(single_frame, want)
        assert 1e-3 < ref_rms < 0.05, name  # bf16 rounding, not a broken reference
        assert rms_rel_err(got, want) <= ORACLE_FACTOR * ref_rms, name
        assert rel_err(got, want) <= ORACLE_MAX_FACTOR * ref_max, name
        wrong = encode_first_frame_2d(vae, pixels, _tap=0)
        assert rms_rel_err(wrong, want) > 10 * ref_rms, name


def test_oracle_report_through_the_stage_bf16():
    vae = bf16_vae("tiny")
    req = tiny.i2v_request(64, 96, num_frames=9)
    req.image = req.image_pixels = smooth_image(64, 96, seed=1)
    report = check_against_oracle(fp32_oracle(vae), vae, req, "first_frame_2d")
    assert report.equivalent and not report.bitwise and report.noise_identical, str(report)
    assert report.dtype == "bfloat16" and report.reference == "fp32 oracle (single_frame)"
    assert 0 < report.reference_rms_rel_err < 0.05
    record = EquivalenceRecord(**report.record_fields())  # what the benchmarks store
    assert record.equivalent and record.max_rel_err == report.max_rel_err
    assert "rms rel err <= max(1.1 x single_frame's" in record.rule
    assert str(report).startswith("EQUIVALENT: first_frame_2d against fp32 oracle (single_frame) in bfloat16")
    # Negative control through the same check: the first temporal tap.
    wrong = FirstFrameEncoder(vae, self_check=False, _tap=0)
    bad = check_against_oracle(fp32_oracle(vae), vae, req, "first_frame_2d", stage_kwargs={"first_frame": wrong})
    assert not bad.equivalent and bad.noise_identical, str(bad)
    assert bad.rms_rel_err > 10 * bad.limit_rms_rel_err
    assert not EquivalenceRecord(**bad.record_fields()).equivalent
    assert str(bad).startswith("NOT EQUIVALENT")


def test_oracle_report_fp32():
    """In fp32 the reference path is the oracle itself (error 0), so the limit is the fp32 rule, 1e-5."""
    vae = tiny.vae()
    req = tiny.i2v_request(64, 96, num_frames=5)
    report = check_against_oracle(vae, vae, req, "first_frame_2d")
    assert report.reference_max_rel_err == report.reference_rms_rel_err == 0.0
    assert report.limit_max_rel_err == report.limit_rms_rel_err == ORACLE_FP32_RTOL
    assert report.equivalent and 0 < report.max_rel_err <= ORACLE_FP32_RTOL, str(report)
    same = check_against_oracle(vae, vae, req, "single_frame")
    assert same.bitwise and same.equivalent and same.max_rel_err == 0.0
    assert EquivalenceRecord(**same.record_fields()).bitwise
    assert set(report.to_dict()) >= {"equivalent", "bitwise", "max_abs_err", "max_rel_err", "reference", "rule"}
    with pytest.raises(InputError, match="vae_fp32: must be float32"):
        check_against_oracle(bf16_vae("tiny"), vae, req, "first_frame_2d")


# --- the structure guard ----------------------------------------------------------------------------------------


def _mutated(mutate) -> AutoencoderKLWan:
    vae = copy.deepcopy(tiny.vae())
    mutate(vae)
    return vae


def _set_padding(vae):
    vae.encoder.down_blocks[0].resnets[0].conv1._padding = (1, 1, 1, 1, 1, 1)  # non-causal: one frame each side


MUTATIONS = {
    "swapped norm": (
        lambda v: setattr(v.encoder.down_blocks[1].resnets[0], "norm1", nn.GroupNorm(1, 16)),
        r"encoder.down_blocks.1.resnets.0.norm1: expected WanRMS_norm, got torch.nn.modules.normalization.GroupNorm",
    ),
    "activation changed": (
        lambda v: setattr(v.encoder, "nonlinearity", nn.GELU()),
        r"encoder.nonlinearity: expected SiLU",
    ),
    "missing attention": (
        lambda v: v.encoder.mid_block.attentions.__delitem__(0),
        r"encoder.mid_block: 2 resnets for 0 attentions",
    ),
    "extra module": (
        lambda v: v.encoder.down_blocks[2].add_module("extra", nn.Conv2d(4, 4, 1)),
        r"encoder.down_blocks.2.extra: Conv2d is not part of the mapped encoder",
    ),
    "non-causal padding": (_set_padding, r"conv1: time padding \(1, 1\) is not causal"),
    "upsample in the encoder": (
        lambda v: setattr(v.encoder.down_blocks[0].downsampler, "mode", "upsample2d"),
        r"encoder.down_blocks.0.downsampler: mode 'upsample2d'",
    ),
    "patch size": (lambda v: v.register_to_config(patch_size=4), r"config patch_size 4"),
    "latent stats": (lambda v: v.register_to_config(latents_mean=[0.0] * 4), r"latents_mean/std have 4/48 values"),
    "dropout in training": (
        lambda v: (setattr(v.encoder.mid_block.resnets[0].dropout, "p", 0.1), v.train()),
        r"dropout p=0.1 in training mode",
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_structure_guard_raises_and_names_the_mismatch(mutation):
    mutate, message = MUTATIONS[mutation]
    vae = _mutated(mutate)
    with pytest.raises(UnsupportedEncoder, match=message) as info:
        check_supported(vae)
    assert info.value.mismatches
    with pytest.raises(UnsupportedEncoder):
        Cosmos3LatentPreparationStage(vae, encode_strategy="first_frame_2d", dtype=torch.float32)
    with pytest.raises(UnsupportedEncoder):
        encode_first_frame_2d(vae, tiny.image(32, 32))


def test_structure_guard_refuses_a_subclass_that_overrides_the_encode():
    with pytest.raises(UnsupportedEncoder, match="expected diffusers AutoencoderKLWan, got tests.tiny.LookAheadWanVAE"):
        check_supported(tiny.look_ahead_vae())


def test_structure_guard_lists_every_mismatch():
    def two(vae):
        vae.encoder.conv_in._padding = (1, 1, 1, 1, 0, 0)
        vae.encoder.norm_out = nn.LayerNorm(4)

    with pytest.raises(UnsupportedEncoder) as info:
        check_supported(_mutated(two))
    assert len(info.value.mismatches) >= 2
    assert str(info.value).count("\n  ") == len(info.value.mismatches)


def test_supported_vaes_pass_the_guard():
    for kind in ("tiny", "mid", "wan21"):
        check_supported(seeded_vae(kind))
        check_supported(bf16_vae(kind))


# --- the stage and the strategy object --------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [1, 5, 9])
def test_stage_first_frame_2d_matches_single_frame(num_frames):
    kind = "image" if num_frames == 1 else "video"
    if kind == "video":
        req = tiny.i2v_request(64, 96, num_frames)
    else:
        req = Req(height=64, width=96, num_frames=1, output_kind="image")
    out = {}
    for strategy in ("single_frame", "first_frame_2d"):
        stage = Cosmos3LatentPreparationStage(tiny.vae(), encode_strategy=strategy, dtype=tiny.PRESET.dtype)
        out[strategy] = stage(copy.copy(req))
    new, old = out["first_frame_2d"], out["single_frame"]
    assert new.latents.shape == old.latents.shape
    if kind == "image":  # T2I: no encode, pure noise, identical
        assert torch.equal(new.latents, old.latents) and new.image_latent is None
        return
    assert new.image_latent.shape == old.image_latent.shape == (1, 48, 1, 4, 6)
    assert new.latents.dtype == new.image_latent.dtype == tiny.PRESET.dtype
    assert rel_err(new.image_latent, old.image_latent) <= ORACLE_FP32_RTOL
    assert torch.equal(new.latents[:, :, :1], new.image_latent)
    assert torch.equal(new.latents[:, :, 1:], old.latents[:, :, 1:])  # the noise frames, bit for bit
    assert torch.equal(new.velocity_mask, old.velocity_mask)


def test_stage_options():
    vae = tiny.vae()
    encoder = FirstFrameEncoder(vae, self_check=False)
    stage = Cosmos3LatentPreparationStage(vae, encode_strategy="first_frame_2d", first_frame=encoder)
    assert stage.first_frame is encoder
    assert Cosmos3LatentPreparationStage(vae, encode_strategy="single_frame").first_frame is None
    with pytest.raises(InputError, match="first_frame: is only used by encode_strategy 'first_frame_2d'"):
        Cosmos3LatentPreparationStage(vae, encode_strategy="single_frame", first_frame=encoder)
    with pytest.raises(InputError, match="first_frame: must encode with the stage's VAE"):
        Cosmos3LatentPreparationStage(seeded_vae("mid"), encode_strategy="first_frame_2d", first_frame=encoder)


def test_modes_and_inputs():
    vae = tiny.vae()
    with pytest.raises(InputError, match=r"mode: cuda_graph needs the VAE on a CUDA device \(got 'cpu'\)"):
        FirstFrameEncoder(vae, mode="cuda_graph")
    with pytest.raises(InputError, match="mode: must be one of"):
        FirstFrameEncoder(vae, mode="graph")
    with pytest.raises(InputError, match="compile_mode: must be one of"):
        FirstFrameEncoder(vae, mode="compile", compile_mode="max-autotune")
    encoder = FirstFrameEncoder(vae, self_check=False)
    with pytest.raises(InputError, match=r"pixels: must be a \[B, 3, H, W\] tensor"):
        encoder(tiny.image(32, 32).unsqueeze(2))
    with pytest.raises(InputError, match="multiples of the patch size 2"):
        encoder(tiny.image(32, 33))
    tiled = copy.deepcopy(vae)
    tiled.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32)
    with pytest.raises(InputError, match="vae.use_tiling: must be off"):
        encode_first_frame_2d(tiled, tiny.image(64, 64))
    # A batch of images: each as its own one-frame encode.
    batch = torch.cat([tiny.image(32, 48, seed=s) for s in (0, 1)])
    both = encoder(batch)
    for i in range(2):
        assert rel_err(both[i : i + 1], encode_latents(vae, batch[i : i + 1].unsqueeze(2))) <= ORACLE_FP32_RTOL


def test_the_2d_network_traces_as_one_graph():
    """torch.compile's front end captures the 2D encode whole (fullgraph: no graph break). Inductor itself is
    left to the GPU tool: compiling the tiny encoder on this 2-core CPU took 137 s."""
    encoder = FirstFrameEncoder(tiny.vae(), self_check=False)
    pixels = tiny.image(32, 48)
    traced = torch.compile(encoder._latents, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert torch.equal(traced(pixels), encoder(pixels))
    assert FirstFrameEncoder(tiny.vae(), mode="compile", self_check=False).mode == "compile"  # built lazily


@pytest.mark.slow
def test_speed_tool_smoke_on_the_cpu(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("first_frame_speed", REPO / "tools" / "first_frame_speed.py")
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, tool)  # dataclasses look their module up there
    spec.loader.exec_module(tool)
    out = tmp_path / "speed.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--resolutions", "48x32", "--rounds", "2",
            "--warmup", "0", "--compile-modes", "none", "--matmul-n", "64", "--json", str(out)]  # fmt: skip
    assert tool.main(argv) == 0
    result = json.loads(out.read_text())["results"][0]
    names = [v["name"] for v in result["variants"]]
    assert names == ["single_frame (3D)", "first_frame_2d eager", "first_frame_2d eager, packed weights (a copy)"]
    assert all(len(v["samples_ms"]) == 2 for v in result["variants"])
    flops_3d, flops_2d = (result["variants"][i]["flops"] for i in (0, 1))
    assert 2.5 < flops_3d / flops_2d < 3.0  # the zero taps are gone; 1x1 convs and the rest remain
    assert {e["path"] for e in result["errors"]} >= {"expand", "single_frame", "first_frame_2d eager"}
    assert all(e["equivalent"] for e in result["errors"])
    assert json.loads(out.read_text())["datasheet_bf16_dense_tflops"] is None  # no datasheet peak for a CPU
    assert tool.datasheet_peak_tflops("NVIDIA H200") == tool.datasheet_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert tool.datasheet_peak_tflops("NVIDIA H100 PCIe") is None
