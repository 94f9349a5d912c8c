"""Sampling as ComfyUI's KSampler does it, from three separate parts:

- schedule.py    the model's noise schedule: sigmas of SD's training timesteps, and how x and sigma reach the UNet
- schedulers.py  (schedule, steps) -> the sigmas to step along, by ComfyUI's scheduler names
- samplers.py    the step rules by ComfyUI's sampler names (k_samplers.py, step_samplers.py, uni_pc.py)

guidance.py is the CFG denoiser over our UNet, noise.py the random numbers as ComfyUI draws them, ksampler.py the
procedure that joins them. `sample` is the one entry point most callers need.
"""

from collections.abc import Callable

import torch

from .. import ddpm
from .context import Denoiser, SamplerContext
from .guidance import GuidedDenoiser
from .ksampler import (ProgressCallback, SampleResult, check_sigmas, ksampler_sigmas, sample_along, sample_ksampler,
                       step_range)
from .noise import BrownianNoise, initial_noise, step_noise
from .samplers import SAMPLER_NAMES, SAMPLERS, Sampler, get_sampler
from .schedule import DiscreteSchedule
from .schedulers import (SCHEDULER_NAMES, SCHEDULERS, exponential_sigmas, karras_sigmas, scheduler_sigmas,
                         sd_turbo_sigmas)

DEFAULT_SAMPLER, DEFAULT_SCHEDULER = "euler", "normal"  # ComfyUI's first choices


def sample(sd, positive, negative, latent: torch.Tensor, *, seed: int, steps: int,
           cfg: float, denoise: float = 1.0, sampler_name: str | None = None, scheduler: str | None = None,
           callback: ProgressCallback | None = None, check_interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """Sample a raw (unscaled) VAE latent, float32 on the CPU.

    With a sampler name and/or a scheduler name (ComfyUI's; the other defaults to euler / normal) this is ComfyUI's
    KSampler: the same seed and settings give ComfyUI's latent. With neither it is the seed project's DDPM sampler
    (diffusers' DDPMScheduler as SD ships it), unchanged. `latent` gives the size and, for denoise < 1, the picture
    to start from. `callback(step, total, latent)` follows each step (raise in it to stop); `check_interrupt()` runs
    before every model evaluation, also inside two-evaluation steps. `positive` and `negative` are CONDITIONING (a
    tuple of Cond) or plain context tensors [B, T, C]; the DDPM sampler takes only conds over the whole latent.
    """
    if sampler_name is None and scheduler is None:
        return ddpm.sample(sd, positive, negative, latent, seed=seed, steps=steps, cfg=cfg, denoise=denoise,
                           callback=callback)
    return sample_ksampler(sd, positive, negative, latent, seed=seed, steps=steps, cfg=cfg,
                           sampler_name=sampler_name or DEFAULT_SAMPLER, scheduler=scheduler or DEFAULT_SCHEDULER,
                           denoise=denoise, callback=callback, check_interrupt=check_interrupt).latent


__all__ = [
    "BrownianNoise", "DEFAULT_SAMPLER", "DEFAULT_SCHEDULER", "Denoiser", "DiscreteSchedule", "GuidedDenoiser",
    "ProgressCallback", "SAMPLERS", "SAMPLER_NAMES", "SCHEDULERS", "SCHEDULER_NAMES", "SampleResult", "Sampler",
    "SamplerContext", "check_sigmas", "exponential_sigmas", "get_sampler", "initial_noise", "karras_sigmas",
    "ksampler_sigmas", "sample", "sample_along", "sample_ksampler", "scheduler_sigmas", "sd_turbo_sigmas",
    "step_noise", "step_range",
]
