"""Presets and components: the real Wan 2.2 sizes, seeded weights, and loading from a local folder."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKLWan, Cosmos3OmniTransformer
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME

from cosmos3.components import build_scheduler, build_transformer, build_vae, check_weights_dir
from cosmos3.errors import InputError
from cosmos3.presets import FULL_DEPTH, get_preset
from tests import tiny

FULL_DEPTH_PARAMS = 15_156_222_144  # Cosmos3OmniTransformer at diffusers' defaults (36 layers)


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
    """The real configurations construct in diffusers (no memory allocated on the meta device). At full
    depth the transformer is Cosmos3-Nano: 36 layers of two ~193M-parameter pathways, with the token
    embedding and the LM head (151936 x 4096 each), FULL_DEPTH_PARAMS in all: 30.3 GB in bf16."""
    preset = get_preset("wan22", dit_num_layers=FULL_DEPTH)
    with torch.device("meta"):
        vae = AutoencoderKLWan(**preset.vae.to_diffusers())
        dit = Cosmos3OmniTransformer(**preset.dit.to_diffusers())
    assert sum(p.numel() for p in dit.parameters()) == FULL_DEPTH_PARAMS
    layer = sum(p.numel() for p in dit.layers[0].parameters())
    assert 2 * 190e6 < layer < 2 * 196e6  # two pathways of ~193M
    assert (dit.config.hidden_size, dit.config.num_attention_heads, dit.config.num_key_value_heads) == (4096, 32, 8)
    assert (dit.config.intermediate_size, dit.config.latent_channel, dit.config.latent_patch_size) == (12288, 48, 2)
    assert len(dit.layers) == 36
    assert sum(p.numel() for p in vae.encoder.parameters()) > 1e8


def test_the_default_config_is_diffusers_default_but_for_the_depth():
    """DiTConfig's defaults are Cosmos3-Nano's, which are diffusers' own: only the depth is cut."""
    signature = inspect.signature(Cosmos3OmniTransformer.__init__).parameters
    defaults = {name: p.default for name, p in signature.items()}
    defaults["rope_axes_dim"] = [24, 20, 20]  # None in the signature: the constructor's fallback
    ours = get_preset("wan22").dit.to_diffusers()
    assert {k: v for k, v in ours.items() if k != "num_hidden_layers"} == \
        {k: defaults[k] for k in ours if k != "num_hidden_layers"}
    assert defaults["num_hidden_layers"] == FULL_DEPTH and ours["num_hidden_layers"] == 4


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
    kept = {n for n, d in dtypes.items() if d == torch.float32}
    assert kept and all(n.startswith("time_embedder.") for n in kept)  # as from_pretrained(torch_dtype=bf16) keeps it
    assert {d for n, d in dtypes.items() if n not in kept} == {torch.bfloat16}
    assert dit._keep_in_fp32_modules == ["time_embedder"]


@pytest.mark.parametrize(("kind", "shift"), [("video", 10.0), ("image", 3.0)])
def test_scheduler_is_flow_unipc_with_cosmos3_shift(kind, shift):
    sched = build_scheduler(get_preset("wan22"), output_kind=kind)
    assert sched.config.prediction_type == "flow_prediction" and sched.config.use_flow_sigmas
    assert sched.config.flow_shift == shift and sched.config.num_train_timesteps == 1000


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    build_vae(tiny.PRESET, "cpu", seed=5).save_pretrained(folder / "vae")
    build_transformer(tiny.PRESET, "cpu", seed=5).save_pretrained(folder / "transformer")
    return folder


def copy_tree(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_good_weights_dir_passes_the_check(saved_weights):
    check_weights_dir(saved_weights)


def test_weights_dir_that_does_not_exist(tmp_path):
    with pytest.raises(InputError, match=r"weights_dir: must be an existing folder .*\(got '.*absent'\)"):
        check_weights_dir(tmp_path / "absent")


def test_config_without_weights_is_found_before_loading(saved_weights, tmp_path):
    weights = copy_tree(saved_weights, tmp_path / "w")
    (weights / "vae" / SAFETENSORS_WEIGHTS_NAME).unlink()
    with pytest.raises(InputError, match=r"weights_dir: vae/ must hold the weights: diffusion_pytorch_model"):
        check_weights_dir(weights)
    with pytest.raises(InputError, match=r"weights_dir: vae/ must hold the weights"):
        build_vae(tiny.PRESET, "cpu", weights_dir=weights)


def test_truncated_safetensors_is_found_from_its_header(saved_weights, tmp_path):
    weights = copy_tree(saved_weights, tmp_path / "w")
    path = weights / "transformer" / SAFETENSORS_WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        InputError, match=r"weights_dir: transformer/diffusion_pytorch_model.safetensors must be a compl"
    ):
        check_weights_dir(weights)


def test_sharded_index_naming_a_missing_shard(saved_weights, tmp_path):
    weights = copy_tree(saved_weights, tmp_path / "w")
    index = {
        "metadata": {},
        "weight_map": {"encoder.conv_in.weight": "diffusion_pytorch_model-00001-of-00002.safetensors"},
    }
    (weights / "vae" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=r"vae/diffusion_pytorch_model-00001-of-00002.safetensors is listed in the"):
        check_weights_dir(weights)


def test_weights_that_disagree_with_their_config_fail_as_input_error(saved_weights, tmp_path):
    """Only loading can find this; from_pretrained's ValueError becomes an InputError naming weights_dir."""
    weights = copy_tree(saved_weights, tmp_path / "w")
    config = json.loads((weights / "vae" / "config.json").read_text())
    (weights / "vae" / "config.json").write_text(json.dumps({**config, "base_dim": 32}))
    check_weights_dir(weights)  # the files are all there and complete
    with pytest.raises(InputError, match=r"weights_dir: vae/ must load with diffusers' from_pretrained \(Cannot load"):
        build_vae(tiny.PRESET, "cpu", weights_dir=weights)
