"""bench/measure/crosscheck.py through tools/diffusers_crosscheck.py on the tiny preset: our preprocessing against
diffusers' `_preprocess_conditioning_image` (nothing at the output size, the filter alone at 5/4, the filter
and the cover size where it rounds two ways), and our prepared latents against diffusers' prepare_latents."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")  # the pipeline module imports it (the dev extra installs it)

from bench.measure import crosscheck
from tests.repo import load_tool


def tool():
    return load_tool("diffusers_crosscheck.py")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    path = tmp_path_factory.mktemp("crosscheck") / "crosscheck.json"
    assert tool().main(["--preset", "tiny", "--sizes", "64x48", "--num-frames", "9", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_preprocessing_differs_by_the_filter_and_by_the_cover_size_only_where_each_applies(figures):
    same, five_fourths, rounding, smooth = figures["preprocessing"]
    assert same["source_size"] == [64, 48] and same["max_abs_levels"] == 0 and same["cause"].startswith("none")
    # 80x60 scales by exactly 0.8: both cover 64x48, so only the filter is left to differ.
    assert five_fourths["source_size"] == [80, 60]
    assert five_fourths["ours_cover"] == five_fourths["diffusers_cover"] == [64, 48]
    assert five_fourths["max_abs_levels"] > 0 and five_fourths["cause"].startswith("the filter alone")
    assert rounding["ours_cover"] != rounding["diffusers_cover"]
    assert rounding["cause"].startswith("the filter, and the geometry: ours rounds the cover size")
    assert all(p["output_size"] == [64, 48] and 0 <= p["differing_share"] <= 1 for p in figures["preprocessing"])
    # A smooth picture: the same geometry, and the two filters far closer than on noise.
    assert smooth["source_size"] == [80, 60] and smooth["cause"].startswith("the filter alone")
    assert 0 < smooth["max_abs_levels"] < five_fourths["max_abs_levels"]


def test_our_latents_agree_with_diffusers_within_the_tolerance(figures):
    (lat,) = figures["latents"]
    assert lat["ours_dtype"] == lat["diffusers_dtype"] == "float32"
    assert lat["frame0_within_tolerance"] and lat["frame0_max_rel_err"] <= lat["rtol"]
    assert lat["noise_bitwise"] and lat["condition_mask_equal"]  # the same generator, seed and dtype (tiny)


def test_the_markdown_names_both_sides(figures):
    check = crosscheck.CrossCheck(figures["preset"], figures["device"],
                                  tuple(crosscheck.PreprocessCheck(**{k: tuple(v) if isinstance(v, list) else v
                                                                      for k, v in p.items()})
                                        for p in figures["preprocessing"]),
                                  tuple(crosscheck.LatentCheck(**{k: tuple(v) if isinstance(v, list) else v
                                                                  for k, v in c.items()}) for c in figures["latents"]))
    text = crosscheck.markdown(check)
    assert text.startswith("## diffusers Cosmos3OmniPipeline: cross-check against this package (tiny, cpu)")
    assert "| 64x48 | at the output size | 64x48 | - | 64x48 | 0 |" in text.replace("—", "-")
    assert "`_preprocess_conditioning_image`" in text and "within 0.0078125" in text


def test_the_observed_interpolate_is_put_back():
    shipped = torch.nn.functional.interpolate
    sizes: list = []
    with crosscheck.observed_interpolate(sizes):
        torch.nn.functional.interpolate(torch.zeros(1, 1, 4, 4), size=(2, 3), mode="bilinear")
    assert sizes == [(2, 3)] and torch.nn.functional.interpolate is shipped
