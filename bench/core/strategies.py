"""The optimised encode strategies, one entry each: what it replaced, its revert control, its speedup check.

A strategy is a case label (cosmos3's ENCODE_STRATEGIES). Its entry here is all the suite needs to hold a
run to it: `--revert-*` makes the cases labelled with it run the old path (a negative control, so the gate
must fail), and `--min-*` is the factor the run must show over the old path in latent preparation. The CLI
options, RunControls, GateConfig and the gate's speedup checks are all read from STRATEGIES.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    name: str  # the case label, e.g. single_frame
    # The strategy it replaced, per implementation: ours first, then diffusers' pipeline where it differs.
    # A revert runs the one of these that the case's implementation has (cosmos3.stages: expand; diffusers'
    # Cosmos3OmniPipeline: shipped), else the first.
    replaces: tuple[str, ...]
    revert: str  # the RunControls option, also the --revert-* flag's name
    revert_help: str
    reverted_note: str  # how a run's environment records the revert (Environment.negative_controls)
    speedup: str  # the GateConfig option, also the --min-* flag's name
    default_min_speedup: float
    speedup_help: str
    min_frames: int = 1  # cases with fewer frames are reported, not gated
    cuda_only: bool = False  # gated only on a GPU (on the CPU the gain is not the one that matters)
    # Gated only at these resolutions (where a measurement supports the factor); None: at every one.
    resolutions: frozenset[str] | None = None

    def reverted_to(self, replaced: str) -> str:
        """What a reverted case runs, in an implementation whose single-frame encode replaced `replaced`."""
        return replaced if replaced in self.replaces else self.replaces[0]


SINGLE_FRAME = Strategy(
    name="single_frame",
    replaces=("expand", "shipped"),
    revert="revert_single_frame",
    revert_help="run the old expand path in the cases labelled single_frame (diffusers' pipeline: "
                "prepare_latents as shipped)",
    reverted_note="single_frame reverted to expand (diffusers' pipeline: to shipped)",
    speedup="min_speedup",
    default_min_speedup=2.0,
    speedup_help="single_frame must beat expand (diffusers' pipeline: shipped) by this factor in latent "
                 "preparation (default %(default)s)",
    # With one frame, single_frame and expand do the same work: nothing to gain, nothing to gate.
    min_frames=2,
)

# The 2D first-frame encode does a third of the convolution work; on a GPU it must show. The one
# measurement is 20.7 -> 13.4 ms eager at 1280x720 (1.54x); at 832x480 the stage is launch-bound (about
# 14 ms) and nothing measured says what it gains, so there the factor is reported, not gated, until a GPU
# run of this suite measures it (tools/gpu-evidence.sh smoke prints both).
FIRST_FRAME_2D = Strategy(
    name="first_frame_2d",
    replaces=("single_frame",),
    revert="revert_first_frame",
    revert_help="run the 3D single_frame encode in the cases labelled first_frame_2d",
    reverted_note="first_frame_2d reverted to single_frame",
    speedup="min_speedup_2d",
    default_min_speedup=1.5,
    speedup_help="first_frame_2d must beat single_frame by this factor on a GPU (default %(default)s)",
    cuda_only=True,
    resolutions=frozenset({"1280x720"}),
)

STRATEGIES: tuple[Strategy, ...] = (SINGLE_FRAME, FIRST_FRAME_2D)
BY_NAME = {s.name: s for s in STRATEGIES}
