"""bench.measure.workloads.Models: the parts every kind's workload is built from, built once per process."""

from __future__ import annotations

import pytest
import torch

from bench.core import cases
from bench.measure import workloads
from cosmos3.presets import get_preset


def models(tmp_path) -> workloads.Models:
    return workloads.Models(get_preset("tiny"), torch.device("cpu"), cases.grid_for("tiny"), tmp_path)


def test_a_part_is_built_once_and_kept(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr("cosmos3.components.build_vae", lambda *a, **k: built.append(object()) or built[-1])
    m = models(tmp_path)
    assert m.vae is m.vae is built[0] and len(built) == 1


def test_a_failed_build_is_not_tried_again_for_every_case(tmp_path, monkeypatch):
    """A bad weights folder, or a transformer that does not fit, costs one attempt: every later case that needs
    the part gets the first error again."""
    tries = []

    def broken(*_args, **_kwargs):
        tries.append(1)
        raise FileNotFoundError("vae/ is missing")

    monkeypatch.setattr("cosmos3.components.build_vae", broken)
    m = models(tmp_path)
    for _ in range(3):
        with pytest.raises(FileNotFoundError, match="vae/ is missing"):
            m.vae  # noqa: B018
    with pytest.raises(FileNotFoundError):  # what needs the VAE fails with its error, and builds nothing
        m.diffusers_pipeline  # noqa: B018
    assert len(tries) == 1
    assert models(tmp_path).__dict__.get("_built") is None  # another process's Models starts afresh
