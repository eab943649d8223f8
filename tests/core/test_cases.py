"""The cases a run measures: -k and --case select them before anything is built, as the benchmark child will."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.core import cases
from cosmos3.errors import InputError
from tests.repo import REPO


def names(specs) -> list[str]:
    return [spec.name for spec in specs]


def test_case_patterns_narrow_the_keyword_selection():
    assert names(cases.chosen("tiny", "extended", "test_e2e", ["e2e[single_frame-*]", "e2e[expand-64x48-*]"])) == [
        "e2e[single_frame-96x64-17f]", "e2e[single_frame-64x48-17f]", "e2e[expand-64x48-17f]"]
    assert cases.chosen("tiny", "default", None, []) == cases.all_cases("tiny")


def test_a_pattern_that_names_no_case_of_the_grid_is_an_error_even_beside_good_ones():
    with pytest.raises(InputError) as err:
        cases.chosen("tiny", "default", None, ["vae_encode[*]", "e2e[first_frame_2d-*]"])
    assert str(err.value) == "case: matches no case of preset tiny, grid default (got 'e2e[first_frame_2d-*]')"
    assert names(cases.chosen("tiny", "extended", None, ["e2e[first_frame_2d-*]"])) == [
        "e2e[first_frame_2d-96x64-17f]", "e2e[first_frame_2d-64x48-17f]"]


def test_a_selection_of_nothing_is_an_error():
    with pytest.raises(InputError) as err:
        cases.chosen("tiny", "default", "test_e2e", ["vae_encode[*]"])
    assert str(err.value) == (
        "case: selects no case of preset tiny, grid default, with -k 'test_e2e' (got ['vae_encode[*]'])")


@pytest.mark.slow
def test_case_patterns_select_what_pytest_collects():
    keyword, patterns = "not expand", ["latent_prep[*-64x48-*]", "e2e[*]"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "bench/benchmarks",
         "--preset=tiny", "--grid=extended", "-k", keyword, *(f"--case={p}" for p in patterns)],
        cwd=REPO, capture_output=True, text=True, check=False)
    collected = re.findall(r"::(test_\w+\[[^\]]+\])", out.stdout)
    mine = [f"test_{s.benchmark}[{cases.param_id(s)}]" for s in cases.chosen("tiny", "extended", keyword, patterns)]
    assert len(mine) == 10 and sorted(mine) == sorted(collected), out.stdout + out.stderr


def test_every_kind_is_registered_once_for_its_grid_and_its_workload():
    """A kind is its Kind member, its grid (cases.KINDS) and its workload (workloads.BUILDERS): a kind missing
    either entry fails here. Its pytest test is made from the registry, one per kind (test_kinds.py)."""
    from bench.benchmarks import test_kinds
    from bench.core.kinds import Kind
    from bench.measure import workloads

    assert list(cases.KINDS) == list(Kind)  # also the run order: stages, then whole pipelines
    assert set(workloads.BUILDERS) == set(Kind)
    assert sorted(p.name for p in (REPO / "bench" / "benchmarks").glob("test_*.py")) == [cases.BENCHMARK_MODULE]
    for kind in Kind:
        test = getattr(test_kinds, f"test_{kind}")
        assert [m.args for m in test.pytestmark if m.name == "cases"] == [(kind,)], kind
    assert all(spec.benchmark in set(Kind) for spec in cases.all_cases("wan22", "extended"))


def test_the_gate_reads_what_it_knows_of_a_kind_from_the_registry():
    """Which kinds the gate holds strategies against each other in, gates speedups in, and checks stages of,
    all come from cases.KINDS (and equal what they were when the gate listed them itself)."""
    from bench.core.kinds import Kind
    from bench.gate import rules

    assert rules.STRATEGY_BENCHMARKS == (Kind.LATENT_PREP, Kind.DIFFUSERS_PREPARE_LATENTS, Kind.E2E)
    assert rules.SPEEDUP_GATED == {Kind.LATENT_PREP, Kind.DIFFUSERS_PREPARE_LATENTS}
    assert rules.STAGE_BENCHMARKS == {Kind.E2E: {"latent_preparation": Kind.LATENT_PREP},
                                      Kind.DIFFUSERS_E2E: {"latent_preparation": Kind.DIFFUSERS_PREPARE_LATENTS}}


# ---- -k: the cases pytest would run ---------------------------------------------------------------


# and, or, not, parentheses, a bracketed id, and pytest's case-insensitive substring match (E2E).
KEYWORD = "(test_latent_prep and 64x48 and not expand) or vae_encode[96x64-1f] or E2E"


@pytest.mark.slow
def test_keyword_selects_what_pytest_collects():
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "bench/benchmarks",
         "--preset=tiny", "-k", KEYWORD], cwd=REPO, capture_output=True, text=True, check=False)
    collected = re.findall(r"::(test_\w+\[[^\]]+\])", out.stdout)
    mine = [f"test_{s.benchmark}[{cases.param_id(s)}]" for s in cases.select(cases.all_cases("tiny"), KEYWORD)]
    assert len(mine) == 10 and mine == collected, out.stdout + out.stderr  # 3 x 2 latent_prep, 1 encode, 2 e2e, 1 diffusers_e2e


def test_keyword_errors_name_the_expression():
    with pytest.raises(InputError, match="keyword: must be a pytest -k expression"):
        cases.select(cases.all_cases("tiny"), "single_frame and (")
