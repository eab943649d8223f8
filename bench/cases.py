"""The benchmark grid per preset: parameters and ids are data, read by the benchmark modules."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.records import CaseSpec
from cosmos3.errors import InputError
from cosmos3.stages import ENCODE_STRATEGIES


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


def grid_for(preset: str, name: str = "default") -> Grid:
    """The preset's grid; "extended" adds the upstream table's e2e resolution and e2e first_frame_2d."""
    if preset not in GRIDS:
        raise InputError("preset", f"has no benchmark grid; must be one of {sorted(GRIDS)}", preset)
    if name not in GRID_NAMES:
        raise InputError("grid", f"must be one of {list(GRID_NAMES)}", name)
    grid = GRIDS[preset]
    if name == "extended":
        grid = dataclasses.replace(grid, e2e_resolutions=(*grid.e2e_resolutions, UPSTREAM_E2E[preset]),
                                   e2e_strategies=ENCODE_STRATEGIES)
    return grid


def latent_prep_cases(preset: str, grid: str = "default") -> list[CaseSpec]:
    g = grid_for(preset, grid)
    return [
        CaseSpec("latent_prep", w, h, n, strategy)
        for (w, h) in g.resolutions
        for n in g.latent_prep_frames
        for strategy in ENCODE_STRATEGIES
    ]


def vae_encode_cases(preset: str, grid: str = "default") -> list[CaseSpec]:
    g = grid_for(preset, grid)
    return [CaseSpec("vae_encode", w, h, n) for (w, h) in g.resolutions for n in g.vae_encode_frames]


def e2e_cases(preset: str, grid: str = "default") -> list[CaseSpec]:
    g = grid_for(preset, grid)
    return [CaseSpec("e2e", w, h, g.e2e_frames, strategy) for (w, h) in g.e2e_resolutions for strategy in g.e2e_strategies]
