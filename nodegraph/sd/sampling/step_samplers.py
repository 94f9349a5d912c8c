"""ComfyUI's `ddpm` and `lcm` samplers: one model evaluation per step, fresh noise after each step but the last.

- ddpm is ancestral sampling with the DDPM posterior q(x_prev | x, x0) of Ho et al. (2020), taken between the two
  noise levels of each step (so a short sigma list skips training timesteps, as diffusers' DDPMScheduler does with
  fewer inference steps). The posterior lives in the variance-preserving space, so x is divided by sqrt(1 + sigma^2)
  on the way in and multiplied back on the way out, as ComfyUI's generic step sampler does.
- lcm is the multistep sampling of Latent Consistency Models (Luo et al. 2023): jump to the denoised estimate, then
  noise it afresh to the next sigma. The consistency-model boundary scaling is not here: for LCM checkpoints it is
  part of the model's schedule, so with an ordinary SD model this is plain "denoise, re-noise".

Both draw their noise from ctx.step_noise (ComfyUI's default noise sampler), built once before the first step.
"""

import torch

from .context import Denoiser, SamplerContext, batch_sigma
from .noise import NoiseSampler


def _ddpm_posterior_step(x_vp: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, eps: torch.Tensor,
                         noise: NoiseSampler) -> torch.Tensor:
    """One DDPM posterior draw from variance-preserving x at sigma down to sigma_next (the mean alone when
    sigma_next is 0). alpha-bar comes from the sigmas themselves (1 / (sigma^2 + 1)), not from a beta table, and the
    arithmetic is ComfyUI's, term for term, so float32 results match it bit for bit."""
    alpha_bar = 1 / ((sigma * sigma) + 1)
    alpha_bar_next = 1 / ((sigma_next * sigma_next) + 1)
    alpha = alpha_bar / alpha_bar_next  # this step's alpha: one minus the "beta" of the skipped stretch
    mean = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_bar).sqrt())
    if sigma_next > 0:
        # The posterior's "fixed small" variance beta * (1 - alpha_bar_next) / (1 - alpha_bar).
        spread = ((1 - alpha) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar)).sqrt()
        mean = mean + spread * noise(sigma, sigma_next)
    return mean


@torch.no_grad()
def ddpm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """ComfyUI's `ddpm` (sample_ddpm): the DDPM posterior step between consecutive sigmas."""
    noise = ctx.step_noise(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma))
        ctx.report(i, x, denoised)
        eps = (x - denoised) / sigma  # for v models too: the noise that the denoised estimate implies
        x = _ddpm_posterior_step(x / torch.sqrt(1.0 + sigma**2.0), sigma, sigma_next, eps, noise)
        if sigma_next != 0:  # the last step to 0 leaves x unscaled: there VP space and sigma space coincide
            x = x * torch.sqrt(1.0 + sigma_next**2.0)
    return x


@torch.no_grad()
def lcm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """ComfyUI's `lcm` (sample_lcm, at its defaults): x becomes the denoised estimate, then is noised to the next
    sigma with fresh unit noise (the model schedule's noise_scaling: x0 + sigma * noise); no noise after the last."""
    noise = ctx.step_noise(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma))
        ctx.report(i, x, denoised)
        x = denoised
        if sigma_next > 0:
            x = ctx.schedule.noise_scaling(sigma_next, noise(sigma, sigma_next), x, max_denoise=False)
    return x


STEP_SAMPLERS = {"ddpm": ddpm, "lcm": lcm}
