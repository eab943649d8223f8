"""Cosmos3TimestepPreparationStage: a fresh flow-matching UniPC scheduler and its timesteps for the request."""

from __future__ import annotations

import torch

from cosmos3.components import build_scheduler
from cosmos3.presets import Preset
from cosmos3.request import Req
from cosmos3.stages.base import PipelineStage


class Cosmos3TimestepPreparationStage(PipelineStage):
    """Cosmos3's shift is 10.0 for video (T2V / I2V) and 3.0 for T2I; the preset holds both."""

    name = "timestep_preparation"

    def __init__(self, preset: Preset, device: torch.device | str) -> None:
        self.preset = preset
        self.device = torch.device(device)

    def forward(self, req: Req) -> Req:
        # A scheduler per request: UniPC keeps its multistep history between steps.
        req.scheduler = build_scheduler(self.preset, output_kind=req.output_kind)
        req.scheduler.set_timesteps(req.num_inference_steps, device=self.device)
        req.timesteps = req.scheduler.timesteps
        return req
