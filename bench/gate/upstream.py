"""The upstream change's published table, which the e2e cases at its size are compared with."""

from __future__ import annotations

from dataclasses import dataclass

# sglang PR #27084 (single-frame I2V encode): Cosmos3-Nano I2V, 832x480, 81 frames, 35 steps,
# guidance 4.0, one H100, mean of 3 runs, stage timers NOT device-synchronised.
SOURCE = "sglang PR #27084 (Cosmos3-Nano I2V, one H100, mean of 3 runs)"
WIDTH, HEIGHT, NUM_FRAMES, STEPS = 832, 480, 81, 35


@dataclass(frozen=True)
class UpstreamStage:
    stage: str  # this suite's stage name ("total" for end to end)
    expand_ms: float
    single_frame_ms: float
    # Which of this suite's figures corresponds to upstream's (whose stage timers are host timers, no sync).
    corresponds: str = ""


TABLE = (
    UpstreamStage("latent_preparation", 1176.62, 342.11,
                  "ours is synchronised; upstream's host timer also charges it work still queued, so compare "
                  "with `python -m cosmos3 --stage-timer host`"),
    UpstreamStage("denoising", 25968.30, 25335.88,
                  "ours is synchronised; upstream's includes latent preparation's queued work, ours does not"),
    UpstreamStage("decoding", 1795.88, 1792.55,
                  "ours is synchronised; upstream's ends at the copy of the frames to the host, a sync too"),
    UpstreamStage("total", 28998.63, 27527.53,
                  "both end at a sync (the frames on the host): the totals correspond directly"),
)

# What differs between that table and this suite's figures, said with every comparison.
DIFFERENCES = (
    "random weights here, real Cosmos3-Nano weights upstream (latency does not depend on their values)",
    ("diffusers' Cosmos3OmniTransformer at Cosmos3-Nano's widths, 4 of its 36 layers by default "
     "(--dit-layers 36 for all of it): denoising is about a ninth of upstream's at the default depth"),
    ("stage timers synchronised with the device here; upstream's are not, so its GPU work can be "
     "charged to a later stage (its denoising moved 2.4% though the change does not touch it); "
     "`python -m cosmos3 --stage-timer host` times stages upstream's way"),
    "medians of device-synchronised rounds here, means of 3 runs upstream",
)
