"""Synthetic compare records, for the tests of the judge, calibration and telemetry."""

from __future__ import annotations

import numpy as np

from bench.compare.policy import TrialPolicy
from bench.compare.record import CompareRecord, Criteria, PairedCase, Side
from bench.core.records import CaseResult, CaseSpec


def paired(name_strategy="single_frame", *, ratio=1.0, noise=0.01, trials=30, seed=0, frames=33,
           head_mem=None, base_mem=None, log_ratios=None):
    """A synthetic pair: base rounds ~10 ms, head rounds `ratio` times them (or exp(log_ratios) times),
    each side with its own noise."""
    rng = np.random.default_rng(seed)
    spec = CaseSpec("latent_prep", 1280, 720, frames, name_strategy)
    if log_ratios is not None:
        trials = len(log_ratios)
    base = 10 * np.exp(noise * rng.standard_normal(trials))
    if log_ratios is None:
        head = ratio * base * np.exp(noise * rng.standard_normal(trials))
    else:
        head = base * np.exp(log_ratios)
    def memory(working_gib):
        return {} if working_gib is None else {"peak_mem_gib": working_gib + 1.0, "resident_mem_gib": 1.0}

    head_case = CaseResult(spec, tuple(head), **memory(head_mem))
    base_case = CaseResult(spec, tuple(base), **memory(base_mem))
    return PairedCase(head_case, base_case, tuple(bool(x) for x in rng.integers(0, 2, trials)), "budget")


def record(pairs, unpaired=(), make_env=None, **criteria):
    env = make_env()
    side = {"dirty": False, "cosmos3_file": "/x/cosmos3/__init__.py", "environment": env}
    return CompareRecord(
        base=Side("base", "main", "a" * 40, **side), head=Side("head", "working tree", "b" * 40, **side),
        criteria=Criteria(**criteria), policy=TrialPolicy(), pairs=tuple(pairs), unpaired=tuple(unpaired),
    )
