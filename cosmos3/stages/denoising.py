"""Cosmos3DenoisingStage: the Cosmos3 denoise loop with classifier-free guidance and profiler stepping."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import Cosmos3OmniTransformer
from torch.profiler import record_function
from tqdm.auto import tqdm

from cosmos3 import dit_inputs
from cosmos3.dit_inputs import PromptIds
from cosmos3.errors import InputError
from cosmos3.profiler import DENOISE_STEP_EVENT, get_active_profiler
from cosmos3.request import Req
from cosmos3.stages.base import PipelineStage


class Cosmos3DenoisingStage(PipelineStage):
    """Runs diffusers' Cosmos3OmniTransformer over every timestep and steps the scheduler.

    As diffusers' Cosmos3OmniPipeline drives it: one joint text-and-vision sequence per guidance pass
    (cosmos3.dit_inputs, built once per request before the loop), the conditional pass then the
    unconditional one, each batch 1, with the step's timestep on every noisy patch, and
    `uncond + scale * (cond - uncond)` in float32. For I2V latent frame 0 is a condition, not noise:
    the transformer predicts nothing there, the velocity is multiplied by velocity_mask, and
    image_latent is written back into latent frame 0 after every step, as sglang does. After each
    step of a profiled, non-warm-up request the active profiler is advanced (the upstream fix this
    suite guards).

    One difference from diffusers' loop: it reads the timestep with `t.item()` (a device sync each
    step); here the timestep tensor is expanded on the device, so the loop does not wait on the GPU.
    """

    name = "denoising"

    def __init__(
        self,
        transformer: Cosmos3OmniTransformer,
        omni: Any,
        prompt: PromptIds,
        *,
        show_progress: bool = False,
    ) -> None:
        self.transformer = transformer
        self.omni = omni  # diffusers' Cosmos3OmniPipeline: its sequence builders (cosmos3.dit_inputs)
        self.prompt = prompt
        self.show_progress = show_progress

    def check_inputs(self, req: Req) -> None:
        super().check_inputs(req)
        for name in ("latents", "scheduler", "timesteps"):
            if getattr(req, name) is None:
                raise InputError(name, "must be set by the earlier stages before denoising")
        if req.is_i2v and (req.image_latent is None or req.velocity_mask is None):
            raise InputError("image_latent", "I2V denoising needs image_latent and velocity_mask from latent preparation")

    def passes(self, req: Req) -> dict[str, dict[str, Any]]:
        """The static part of each guidance pass for this request's latent shape: cond, and uncond with guidance."""
        device = req.latents.device
        which = {"cond": self.prompt.cond}
        if req.guidance_scale > 1.0:
            which["uncond"] = self.prompt.uncond
        return {name: dit_inputs.packed_pass(self.omni, ids, req.latents, image_condition=req.is_i2v, device=device)
                for name, ids in which.items()}

    def _dit(self, latents: torch.Tensor, t: torch.Tensor, packed: dict[str, Any]) -> torch.Tensor:
        """One transformer pass: [1, C, T, H, W] velocity, zero on the condition frames."""
        timesteps = t.to(latents.device).reshape(1).expand(dit_inputs.noisy_tokens(packed))
        preds, _, _ = self.transformer(vision_tokens=[latents.to(self.transformer.dtype)], vision_timesteps=timesteps,
                                       **packed, return_dict=False)
        return preds[0].float()

    def predict_velocity(self, latents: torch.Tensor, t: torch.Tensor, guidance_scale: float,
                         passes: dict[str, dict[str, Any]]) -> torch.Tensor:
        cond = self._dit(latents, t, passes["cond"])
        if "uncond" not in passes:
            return cond
        uncond = self._dit(latents, t, passes["uncond"])
        return uncond + guidance_scale * (cond - uncond)

    def after_step(self, req: Req) -> None:
        """Advance the profiler once per step for profiled requests; warm-ups never step it."""
        if req.profile and not req.is_warmup:
            profiler = get_active_profiler()
            if profiler is not None:
                profiler.step()

    @torch.no_grad()
    def forward(self, req: Req) -> Req:
        scheduler = req.scheduler
        passes = self.passes(req)
        steps = tqdm(req.timesteps, desc="denoising", unit="step", disable=not self.show_progress, leave=False)
        for t in steps:
            with record_function(DENOISE_STEP_EVENT):
                velocity = self.predict_velocity(req.latents, t, req.guidance_scale, passes).to(req.latents.dtype)
                if req.is_i2v:
                    velocity = velocity * req.velocity_mask
                latents = scheduler.step(velocity, t, req.latents, return_dict=False)[0]
                if req.is_i2v:
                    latents[:, :, :1] = req.image_latent
            req.latents = latents  # after every step, so observers see the current state
            req.denoise_steps_done += 1
            self.after_step(req)
        return req
