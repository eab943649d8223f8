"""Presets and components: the real Wan 2.2 sizes, seeded weights, and loading from a local folder."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from cosmos3.components import build_scheduler, build_transformer, build_vae
from cosmos3.errors import InputError
from cosmos3.presets import get_preset
from tests import tiny


def test_wan22_vae_config_is_the_real_one():
    vae = get_preset("wan22").vae.to_diffusers()
    assert vae["base_dim"] == 160 and vae["decoder_base_dim"] == 256 and vae["z_dim"] == 48
    assert vae["dim_mult"] == [1, 2, 4, 4] and vae["num_res_blocks"] == 2
    assert vae["temperal_downsample"] == [False, True, True] and vae["is_residual"]
    assert vae["in_channels"] == vae["out_channels"] == 12 and vae["patch_size"] == 2
    assert (vae["scale_factor_spatial"], vae["scale_factor_temporal"]) == (16, 4)
    assert len(vae["latents_mean"]) == len(vae["latents_std"]) == 48
    assert get_preset("wan22").dtype == torch.bfloat16


def test_wan22_models_build_at_full_size_on_meta():
    """The real configurations construct in diffusers (no memory allocated on the meta device)."""
    preset = get_preset("wan22", dit_num_layers=30)
    with torch.device("meta"):
        vae = AutoencoderKLWan(**preset.vae.to_diffusers())
        dit = WanTransformer3DModel(**preset.dit.to_diffusers())
    dit_params = sum(p.numel() for p in dit.parameters())
    assert 4.5e9 < dit_params < 5.5e9  # TI2V-5B proportions at full depth
    assert dit.config.num_attention_heads * dit.config.attention_head_dim == 3072
    assert sum(p.numel() for p in vae.encoder.parameters()) > 1e8


def test_unknown_preset():
    with pytest.raises(InputError, match=r"preset: must be one of \['tiny', 'wan22'\] \(got 'huge'\)"):
        get_preset("huge")


def test_bad_dit_depth():
    with pytest.raises(InputError, match="dit_num_layers: must be >= 1"):
        get_preset("tiny", dit_num_layers=0)


def test_seeded_weights_are_reproducible():
    a = build_vae(tiny.PRESET, "cpu", seed=3)
    b = build_vae(tiny.PRESET, "cpu", seed=3)
    c = build_vae(tiny.PRESET, "cpu", seed=4)
    wa, wb, wc = (m.encoder.conv_in.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_loads_real_weights_from_a_local_folder(tmp_path):
    vae = build_vae(tiny.PRESET, "cpu", seed=5)
    dit = build_transformer(tiny.PRESET, "cpu", seed=5)
    vae.save_pretrained(tmp_path / "vae")
    dit.save_pretrained(tmp_path / "transformer")
    loaded_vae = build_vae(tiny.PRESET, "cpu", weights_dir=tmp_path)
    loaded_dit = build_transformer(tiny.PRESET, "cpu", weights_dir=tmp_path)
    for ours, theirs in ((vae, loaded_vae), (dit, loaded_dit)):
        sd = theirs.state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in ours.state_dict().items())


def test_weights_dir_without_a_model(tmp_path):
    with pytest.raises(InputError, match=r"weights_dir: must be a local diffusers folder with vae/config.json"):
        build_vae(tiny.PRESET, "cpu", weights_dir=tmp_path)


def test_bf16_keeps_diffusers_fp32_modules():
    dit = build_transformer(tiny.PRESET, "cpu", dtype=torch.bfloat16)
    dtypes = {n: p.dtype for n, p in dit.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["blocks.0.norm2.weight"] == torch.float32  # as from_pretrained(torch_dtype=bf16) keeps it


@pytest.mark.parametrize(("kind", "shift"), [("video", 10.0), ("image", 3.0)])
def test_scheduler_is_flow_unipc_with_cosmos3_shift(kind, shift):
    sched = build_scheduler(get_preset("wan22"), output_kind=kind)
    assert sched.config.prediction_type == "flow_prediction" and sched.config.use_flow_sigmas
    assert sched.config.flow_shift == shift and sched.config.num_train_timesteps == 1000
