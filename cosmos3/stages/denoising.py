"""Cosmos3DenoisingStage: the Cosmos3 denoise loop with classifier-free guidance and profiler stepping."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from torch.profiler import record_function
from tqdm.auto import tqdm

from cosmos3.errors import InputError
from cosmos3.profiler import DENOISE_STEP_EVENT, get_active_profiler
from cosmos3.request import Req
from cosmos3.stages.base import PipelineStage


class Cosmos3DenoisingStage(PipelineStage):
    """Runs the DiT over every timestep and steps the scheduler.

    For I2V the velocity is multiplied by velocity_mask and image_latent is written back
    into latent frame 0 after every step. After each step of a profiled, non-warm-up
    request the active profiler is advanced (the upstream fix this suite guards).
    """

    name = "denoising"

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        text_embeds: torch.Tensor,
        *,
        batched_guidance: bool = True,
        show_progress: bool = False,
    ) -> None:
        self.transformer = transformer
        self.text_embeds = text_embeds  # [2, L, D]: [uncond, cond]
        # One forward over [uncond, cond] (batch 2) is how serving runs guidance; two batch-1
        # forwards give the same result (within float tolerance) at lower peak memory.
        self.batched_guidance = batched_guidance
        self.show_progress = show_progress
        self.patch_hw = tuple(transformer.config.patch_size[1:])

    def check_inputs(self, req: Req) -> None:
        super().check_inputs(req)
        for name in ("latents", "scheduler", "timesteps"):
            if getattr(req, name) is None:
                raise InputError(name, "must be set by the earlier stages before denoising")
        if req.is_i2v and (req.image_latent is None or req.velocity_mask is None):
            raise InputError("image_latent", "I2V denoising needs image_latent and velocity_mask from latent preparation")

    def _dit(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """One transformer forward. Latent sizes that are not a multiple of the patch (720p's
        latent height 45) are zero-padded at the bottom/right and the output cropped back."""
        h, w = latents.shape[-2:]
        ph, pw = self.patch_hw
        pad_h, pad_w = -h % ph, -w % pw
        x = F.pad(latents, (0, pad_w, 0, pad_h)) if pad_h or pad_w else latents
        timestep = t.expand(x.shape[0])
        out = self.transformer(x, timestep, context, return_dict=False)[0]
        return out[..., :h, :w]

    def predict_velocity(self, latents: torch.Tensor, t: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        uncond_ctx, cond_ctx = self.text_embeds[:1], self.text_embeds[1:]
        if guidance_scale <= 1.0:
            return self._dit(latents, t, cond_ctx)
        if self.batched_guidance:
            uncond, cond = self._dit(torch.cat([latents, latents]), t, self.text_embeds).chunk(2)
        else:
            uncond, cond = self._dit(latents, t, uncond_ctx), self._dit(latents, t, cond_ctx)
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
        steps = tqdm(req.timesteps, desc="denoising", unit="step", disable=not self.show_progress, leave=False)
        for t in steps:
            with record_function(DENOISE_STEP_EVENT):
                velocity = self.predict_velocity(req.latents, t, req.guidance_scale)
                if req.is_i2v:
                    velocity = velocity * req.velocity_mask
                latents = scheduler.step(velocity, t, req.latents, return_dict=False)[0]
                if req.is_i2v:
                    latents[:, :, :1] = req.image_latent
            req.latents = latents  # after every step, so observers see the current state
            req.denoise_steps_done += 1
            self.after_step(req)
        return req
