"""The benchmark kinds' registry (KINDS) and the grid per preset: parameters and ids are data, read by the
benchmarks, the gate and the report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from _pytest.mark.expression import Expression  # pytest's own -k grammar (and, or, not, parentheses)

from bench.core.kinds import Kind
from bench.core.records import CaseSpec, matches
from cosmos3.errors import InputError


@dataclass(frozen=True)
class Grid:
    """Resolutions are (width, height), as in the case ids (1280x720 = 720p landscape)."""

    resolutions: tuple[tuple[int, int], ...]
    latent_prep_frames: tuple[int, ...]
    vae_encode_frames: tuple[int, ...]  # 1 = the single-frame encode; more = an expanded video
    e2e_resolutions: tuple[tuple[int, int], ...]
    e2e_strategies: tuple[str, ...]
    e2e_frames: int
    e2e_steps: int


GRIDS: dict[str, Grid] = {
    # The real sizes: DESIGN.md's table and the upstream change's 832x480 case.
    "wan22": Grid(
        resolutions=((1280, 720), (832, 480)),
        latent_prep_frames=(33, 81, 121),
        vae_encode_frames=(1, 81),
        e2e_resolutions=((1280, 720),),
        e2e_strategies=("single_frame", "expand"),
        e2e_frames=81,
        e2e_steps=35,
    ),
    # A CPU smoke run of the same shape in seconds.
    "tiny": Grid(
        resolutions=((96, 64), (64, 48)),
        latent_prep_frames=(9, 17, 33),
        vae_encode_frames=(1, 17),
        e2e_resolutions=((96, 64),),
        e2e_strategies=("single_frame", "expand"),
        e2e_frames=17,
        e2e_steps=6,
    ),
}


# The "extended" grid adds, end to end, the upstream change's own case (sglang PR #27084:
# Cosmos3-Nano I2V, 832x480, 81 frames, 35 steps) and the first_frame_2d strategy. Each e2e case
# takes about a minute on one H100, so the default grid keeps two, and the suite within 5 minutes.
UPSTREAM_E2E = {"wan22": (832, 480), "tiny": (64, 48)}
GRID_NAMES = ("default", "extended")


def encode_strategies() -> tuple[str, ...]:
    """cosmos3's encode strategies, imported when cases are made: the registry itself imports no torch, so the
    gate reads it without."""
    from cosmos3.stages import ENCODE_STRATEGIES

    return ENCODE_STRATEGIES


def grid_for(preset: str, name: str = "default") -> Grid:
    """The preset's grid; "extended" adds the upstream table's e2e resolution and e2e first_frame_2d."""
    if preset not in GRIDS:
        raise InputError("preset", f"has no benchmark grid; must be one of {sorted(GRIDS)}", preset)
    if name not in GRID_NAMES:
        raise InputError("grid", f"must be one of {list(GRID_NAMES)}", name)
    grid = GRIDS[preset]
    if name == "extended":
        grid = dataclasses.replace(grid, e2e_resolutions=(*grid.e2e_resolutions, UPSTREAM_E2E[preset]),
                                   e2e_strategies=encode_strategies())
    return grid


def latent_prep_cases(preset: str, grid: str = "default") -> list[CaseSpec]:
    g = grid_for(preset, grid)
    return [
        CaseSpec(Kind.LATENT_PREP, w, h, n, strategy)
        for (w, h) in g.resolutions
        for n in g.latent_prep_frames
        for strategy in encode_strategies()
    ]


# diffusers' Cosmos3OmniPipeline.prepare_latents, both ways (cosmos3.diffusers_omni SINGLE_FRAME and SHIPPED):
# the single-frame encode first, as in latent_prep. Literals here, not imported: a compare base whose
# cosmos3 lacks diffusers_omni must still list its cases (it then reports them as not comparable).
DIFFUSERS_ENCODES = ("single_frame", "shipped")


def diffusers_prepare_latents_cases(preset: str, grid: str = "default") -> list[CaseSpec]:
    """The latent_prep grid (sizes, frame counts), run through diffusers' own prepare_latents."""
    g = grid_for(preset, grid)
    return [
        CaseSpec(Kind.DIFFUSERS_PREPARE_LATENTS, w, h, n, encode)
        for (w, h) in g.resolutions
        for n in g.latent_prep_frames
        for encode in DIFFUSERS_ENCODES
    ]


def diffusers_e2e_cases(preset: str, grid: str = "default") -> list[CaseSpec]:
    """A whole I2V request through diffusers' Cosmos3OmniPipeline.__call__ as shipped (what a user of diffusers
    runs today) at the e2e sizes, frames and steps."""
    g = grid_for(preset, grid)
    return [CaseSpec(Kind.DIFFUSERS_E2E, w, h, g.e2e_frames, "shipped") for (w, h) in g.e2e_resolutions]


def vae_encode_cases(preset: str, grid: str = "default") -> list[CaseSpec]:
    g = grid_for(preset, grid)
    return [CaseSpec(Kind.VAE_ENCODE, w, h, n) for (w, h) in g.resolutions for n in g.vae_encode_frames]


def e2e_cases(preset: str, grid: str = "default") -> list[CaseSpec]:
    g = grid_for(preset, grid)
    return [CaseSpec(Kind.E2E, w, h, g.e2e_frames, strategy) for (w, h) in g.e2e_resolutions for strategy in g.e2e_strategies]


@dataclass(frozen=True)
class KindEntry:
    """One benchmark kind as the grid, the gate and the report know it. Its workload is its entry in
    bench.measure.workloads.BUILDERS; its pytest test, test_<kind>, is made from this registry by
    bench/benchmarks/test_kinds.py."""

    cases: Callable[[str, str], list[CaseSpec]]  # its grid axes: (preset, grid name) -> its cases, in run order
    # The report plots its latency, peak memory and speedups against frames, in a panel of this title; None: not plotted.
    plot_title: str | None = None
    # It runs several encode strategies on the same grid, so the gate holds them against each other in the run
    # (each optimised strategy against the one it replaced, bench.core.strategies).
    strategies_compared: bool = False
    # ... and each optimised strategy must reach its --min-* factor here (not end to end, where denoising dilutes it).
    speedup_gated: bool = False
    # Its stages that another kind measures alone (same size, frames, strategy): stage name -> that kind.
    # The gate flags a stage that costs in this kind what its own benchmark does not say.
    stages_measured_alone: Mapping[str, Kind] = field(default_factory=dict)


# The kinds in the order they run (stage, component, whole pipeline): peak memory depends on what earlier cases
# left resident. diffusers' latent preparation runs beside ours (the same stage, the same VAE); its names start
# with "diffusers_", so `-k diffusers` selects it and `-k test_latent_prep` does not.
KINDS: dict[Kind, KindEntry] = {
    Kind.LATENT_PREP: KindEntry(latent_prep_cases, plot_title="Latent preparation", strategies_compared=True,
                                speedup_gated=True),
    Kind.DIFFUSERS_PREPARE_LATENTS: KindEntry(diffusers_prepare_latents_cases, plot_title="diffusers prepare_latents",
                                              strategies_compared=True, speedup_gated=True),
    Kind.VAE_ENCODE: KindEntry(vae_encode_cases),
    Kind.E2E: KindEntry(e2e_cases, strategies_compared=True,
                        stages_measured_alone={"latent_preparation": Kind.LATENT_PREP}),
    Kind.DIFFUSERS_E2E: KindEntry(diffusers_e2e_cases,
                                  stages_measured_alone={"latent_preparation": Kind.DIFFUSERS_PREPARE_LATENTS}),
}


def all_cases(preset: str, grid: str = "default") -> list[CaseSpec]:
    """Every case of the preset's grid, in run order."""
    return [spec for entry in KINDS.values() for spec in entry.cases(preset, grid)]


# The one pytest module of the benchmarks (bench/benchmarks/), which makes a test_<kind> of each kind.
BENCHMARK_MODULE = "test_kinds.py"


def param_id(spec: CaseSpec) -> str:
    """The pytest parametrisation id: the case name's bracket part, so test ids read like the gate's names."""
    return spec.name.partition("[")[2].rstrip("]")


def keywords(spec: CaseSpec) -> frozenset[str]:
    """The names pytest's -k matches on this case's benchmark item: its node names from the package
    down (bench, benchmarks, the module, test_<kind>[<id>]) and its marker."""
    return frozenset({"bench", "benchmarks", BENCHMARK_MODULE, f"test_{spec.benchmark}[{param_id(spec)}]", "cases"})


def select(specs: list[CaseSpec], expression: str | None) -> list[CaseSpec]:
    """The cases a pytest -k EXPRESSION selects, by pytest's rule: a case-insensitive substring of any keyword."""
    if expression is None:
        return list(specs)
    try:
        compiled = Expression.compile(expression)
    except SyntaxError as exc:
        raise InputError("keyword", f"must be a pytest -k expression ({exc})", expression) from None

    def selected(spec: CaseSpec) -> bool:
        names = [name.lower() for name in keywords(spec)]

        def matcher(sub: str, /, **params: object) -> bool:
            if params:
                raise InputError("keyword", "cannot hold call parameters (as in pytest -k)", expression)
            return any(sub.lower() in name for name in names)

        return compiled.evaluate(matcher)

    return [spec for spec in specs if selected(spec)]


def chosen(preset: str, grid: str, keyword: str | None, patterns: list[str]) -> list[CaseSpec]:
    """The cases a run measures: the grid's, narrowed by -k and by --case (any pattern), as the benchmark
    child will select them. A pattern that names no case of the grid, or a selection of none, is an error:
    a typo would otherwise measure less than asked, silently."""
    specs = all_cases(preset, grid)
    for pattern in patterns:
        if not any(matches(spec.name, pattern) for spec in specs):
            raise InputError("case", f"matches no case of preset {preset}, grid {grid}", pattern)
    specs = select(specs, keyword)
    if patterns:
        specs = [spec for spec in specs if any(matches(spec.name, pattern) for pattern in patterns)]
    if not specs:
        raise InputError("case", f"selects no case of preset {preset}, grid {grid}, with -k {keyword!r}", patterns)
    return specs
