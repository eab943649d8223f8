"""Shared fixtures: synthetic benchmark records with seeded samples."""

from __future__ import annotations

import numpy as np
import pytest

from bench.core.records import CaseResult, CaseSpec, Environment, EquivalenceRecord, RunRecord


def _case(
    benchmark: str = "latent_prep",
    strategy: str | None = "single_frame",
    *,
    width: int = 1280,
    height: int = 720,
    num_frames: int = 81,
    median_ms: float = 10.0,
    noise: float = 0.01,
    rounds: int = 30,
    seed: int = 0,
    peak_mem_gib: float | None = None,
    stage_samples_ms: dict[str, tuple[float, ...]] | None = None,
    equivalence=None,
    **fields,
) -> CaseResult:
    """Log-normal samples: `median_ms` is the distribution's median and `noise` its relative spread."""
    rng = np.random.default_rng(seed)
    samples = median_ms * np.exp(noise * rng.standard_normal(rounds))
    return CaseResult(
        spec=CaseSpec(benchmark, width, height, num_frames, strategy),
        samples_ms=tuple(float(x) for x in samples),
        peak_mem_gib=peak_mem_gib,
        stage_samples_ms=stage_samples_ms or {},
        equivalence=equivalence,
        **fields,
    )


def _env(*, device: str = "NVIDIA H100 80GB HBM3", preset: str = "wan22", device_kind: str = "cuda",
         **env) -> Environment:
    slug = device.lower().replace(" ", "-")
    return Environment(
        device_kind=device_kind, device_name=device, device_slug=slug, preset=preset, dtype="bfloat16",
        torch="2.13.0", diffusers="0.42.1", python="3.12.0", cuda="12.8", driver="570.00",
        **{"commit": "0123456789abcdef", "date_utc": "2025-01-01T00:00:00Z", **env},
    )


def _run(cases, **env) -> RunRecord:
    return RunRecord(environment=_env(**env), cases=tuple(cases))


@pytest.fixture
def make_case():
    return _case


@pytest.fixture
def make_run():
    return _run


@pytest.fixture
def make_env():
    return _env


def equivalence(equivalent: bool = True, bitwise: bool = True, err: float = 0.0) -> EquivalenceRecord:
    return EquivalenceRecord(equivalent=equivalent, bitwise=bitwise, max_abs_err=err, max_rel_err=err)
