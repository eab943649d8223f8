"""A run's inputs checked before anything is created, and its results folder, never reused."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.cli.options import run_controls
from bench.core import cases as cases_mod
from bench.core.environment import device_identity, display_path, run_label
from bench.measure.controls import RunControls
from cosmos3.components import check_weights_dir
from cosmos3.errors import InputError
from cosmos3.paths import NAME_RULE, check_name, check_output_dir, reason
from cosmos3.presets import resolve_preset_name

# A run id names one folder: letters, digits and . _ - only, so it can never climb out of results/.
# The same rule as every record field that becomes part of a path (cosmos3.paths.check_name).
RUN_ID_RULE = NAME_RULE


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run's every input, checked: nothing has been created or measured yet."""

    preset_name: str  # the preset the benchmarks build: tiny | wan22
    preset: str  # the configuration's label, as the run's environment will record it (wan22, wan22-dit30)
    device_name: str
    device_slug: str
    controls: RunControls
    run_id: str
    # What the benchmark child is asked to measure, as the pytest options say it.
    keyword: str | None = None
    cases: tuple[str, ...] = ()
    grid: str = "default"
    weights_dir: Path | None = None
    dit_layers: int | None = None


def plan_run(args: argparse.Namespace, *, suffix: str = "", run_id: str | None = None,
             results_dir: Path | None = None, controls: RunControls | None = None,
             cases: Sequence[str] | None = None) -> RunPlan:
    """The run the options ask for; a caller that runs several (calibrate) names its own run id, results
    folder, controls or cases instead of the options'."""
    preset = resolve_preset_name(args.preset)
    if args.dit_layers is not None and args.dit_layers < 1:
        raise InputError("dit_layers", "must be >= 1", args.dit_layers)
    if args.weights_dir is not None:
        check_weights_dir(args.weights_dir)
    controls = run_controls(args) if controls is None else controls
    cases = tuple(args.case if cases is None else cases)
    controls.check_applies(cases_mod.chosen(preset, args.grid, args.keyword, list(cases)))
    name, slug = device_identity(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    run_id = run_id if run_id is not None else args.run_id
    run_id = run_id if run_id is not None else f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{preset}{suffix}"
    results_dir = args.results_dir if results_dir is None else results_dir
    check_name("run_id", run_id)
    check_output_dir("results_dir", results_dir)
    check_new_run_dir(results_dir, run_id)
    return RunPlan(preset, run_label(preset, args.dit_layers), name, slug, controls, run_id, args.keyword, cases,
                   args.grid, args.weights_dir, args.dit_layers)


def check_new_run_dir(results_dir: Path, run_id: str) -> Path:
    """results_dir/run_id: a name by the one rule, not yet there (a symlink to nothing counts as there)."""
    check_name("run_id", run_id)
    run_dir = results_dir / run_id
    if os.path.lexists(run_dir):
        raise InputError("run_id", "names a results folder that exists; runs are never overwritten",
                         display_path(run_dir))
    return run_dir


def make_run_dir(results_dir: Path, run_id: str) -> Path:
    """Create results_dir/run_id, never reusing one; every OSError an InputError naming the option."""
    run_dir = check_new_run_dir(results_dir, run_id)
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise InputError("run_id", "names a results folder that exists; runs are never overwritten",
                         display_path(run_dir)) from None
    except OSError as exc:
        raise InputError("results_dir", f"must be a folder that can be created ({reason(exc)})",
                         display_path(run_dir)) from None
    return run_dir


def unused_name(parent: Path, prefix: str) -> Path:
    """parent/<prefix>-<UTC time>, with -2, -3, ... where that exists (two reports in one second)."""
    stem = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    path, n = parent / stem, 1
    while path.exists():
        n += 1
        path = parent / f"{stem}-{n}"
    return path
