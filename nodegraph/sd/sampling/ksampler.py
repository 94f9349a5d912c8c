"""ComfyUI's KSampler procedure over our model: sigmas from (scheduler, steps, denoise, step range), the starting
noise, guidance, the sampler run, and the way back to a raw VAE latent. Each convention here is ComfyUI's
(comfy/sample.py, comfy/samplers.py), so one seed and one set of settings give ComfyUI's latent."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .context import SamplerContext
from .guidance import GuidedDenoiser, repeat_to_batch
from .noise import initial_noise
from .samplers import Sampler, get_sampler
from .schedule import DiscreteSchedule
from .schedulers import scheduler_sigmas

# (step, total, latent): after each step's first model evaluation, with the denoised estimate of that step in the
# sampler's (scaled) latent space; an exception raised here stops sampling.
ProgressCallback = Callable[[int, int, torch.Tensor], None]


def ksampler_sigmas(schedule: DiscreteSchedule, scheduler: str, steps: int, denoise: float = 1.0,
                    discard_penultimate_sigma: bool = False) -> torch.Tensor:
    """KSampler's sigmas: the scheduler's, and for denoise < 1 the last steps + 1 sigmas of the schedule of
    int(steps / denoise) steps. With discard_penultimate_sigma (samplers that ask for it) the schedule is computed
    for one step more and its second-to-last sigma dropped."""

    def full(total: int) -> torch.Tensor:
        if not discard_penultimate_sigma:
            return scheduler_sigmas(schedule, scheduler, total)
        sigmas = scheduler_sigmas(schedule, scheduler, total + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        raise ValueError(f"denoise {denoise} runs no step: it must be above 0")
    return full(int(steps / denoise))[-(steps + 1):]


def step_range(sigmas: torch.Tensor, start_step: int | None = None, end_step: int | None = None,
               force_full_denoise: bool = False) -> torch.Tensor:
    """KSamplerAdvanced's part of a schedule: steps start_step..end_step. Ending early leaves noise in the latent
    unless force_full_denoise, which makes the last of the kept sigmas 0 (the leftover noise is denoised away)."""
    if end_step is not None and end_step < len(sigmas) - 1:
        sigmas = sigmas[: end_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            raise ValueError(f"start step {start_step} leaves no step of the {len(sigmas) - 1} to run")
        sigmas = sigmas[start_step:]
    return sigmas


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """A usable SIGMAS value: a non-empty 1-D list of finite, non-negative, non-increasing noise levels."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or not sigmas.is_floating_point():
        raise ValueError("sigmas must be a 1-D float tensor of noise levels (from a scheduler node)")
    if sigmas.numel() == 0:
        raise ValueError("sigmas is empty: the schedule has no step (denoise 0, or a split past its end)")
    if not torch.isfinite(sigmas).all() or (sigmas < 0).any():
        raise ValueError(f"sigmas must be finite and >= 0, got {sigmas.tolist()}")
    if (sigmas[1:] > sigmas[:-1]).any():
        raise ValueError(f"sigmas must not increase from one step to the next, got {sigmas.tolist()}")
    return sigmas.float()


def latent_mask(mask: torch.Tensor, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """An inpainting mask (1 = repaint) of any resolution, [B, H, W] or [H, W], fitted to a latent's shape
    (bilinear to its size, one copy per channel and batch item, as ComfyUI's prepare_mask)."""
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:])).float()
    mask = F.interpolate(mask, size=tuple(shape[2:]), mode="bilinear")
    mask = repeat_to_batch(mask.expand(-1, shape[1], -1, -1), shape[0])
    return mask.to(device)


def model_adm(sd) -> str | None:
    """The ADM kind of a model's family ("sdxl", "refiner": its UNet takes y), None without one (or without a
    family: a stand-in model)."""
    family = getattr(sd, "family", None)
    return None if family is None else family.adm


@dataclass
class SampleResult:
    latent: torch.Tensor  # raw VAE space, float32 on the CPU
    denoised: torch.Tensor  # the last step's x0 estimate, raw VAE space (SamplerCustom's denoised_output)


@torch.no_grad()
def sample_along(sd, positive, negative, latent: torch.Tensor, sigmas: torch.Tensor,
                 *, sampler: str | Sampler, seed: int, cfg: float, add_noise: bool = True,
                 callback: ProgressCallback | None = None, check_interrupt: Callable[[], None] | None = None,
                 batch_index: Sequence[int] | None = None, noise_mask: torch.Tensor | None = None) -> SampleResult:
    """Sample a raw VAE latent along `sigmas` with a sampler by name (SamplerCustom; KSampler after its sigmas).

    `positive` and `negative` are CONDITIONING (a tuple of Cond, each with its area, mask and strength) or plain
    context tensors [B, T, C]; negative may be None (no guidance). `latent` is the starting picture (all zeros for
    text-to-image); it is noised to sigmas[0] with the seed's noise unless add_noise is False (a latent that already
    carries its noise, e.g. the rest of a KSamplerAdvanced run).
    `noise_mask` (1 = repaint) keeps the rest of `latent` as it is. `check_interrupt` runs before every model call.
    """
    sampler = get_sampler(sampler) if isinstance(sampler, str) else sampler
    sigmas = check_sigmas(sigmas)
    schedule: DiscreteSchedule = sd.schedule
    device = sd.device

    noise = initial_noise(latent.shape, seed, batch_index) if add_noise else torch.zeros(latent.shape)
    start = latent.float()
    if torch.count_nonzero(start) > 0:  # ComfyUI leaves an empty latent unscaled (zeros either way)
        start = start * sd.latent_scale
    noise, start, sigmas = noise.to(device), start.to(device), sigmas.to(device)

    model = GuidedDenoiser(sd.unet, schedule, positive, negative, cfg, before_each_call=check_interrupt,
                           adm=model_adm(sd))
    if noise_mask is not None:
        inpaint_noise = noise
        if sampler.random_inpaint_noise:
            inpaint_noise = torch.randn(noise.shape, generator=torch.Generator().manual_seed(int(seed) + 1)).to(device)
        model = _keep_unmasked(model, schedule, latent_mask(noise_mask, start.shape, device), start, inpaint_noise)

    x = schedule.noise_scaling(sigmas[0], noise, start, schedule.is_max_denoise(sigmas[0]))
    last = {"denoised": None}
    total = len(sigmas) - 1

    def on_step(i: int, x_now: torch.Tensor, denoised: torch.Tensor) -> None:
        last["denoised"] = denoised
        if callback is not None:
            callback(i + 1, total, denoised)

    ctx = SamplerContext(schedule, seed=int(seed), callback=on_step)
    try:
        x = sampler.step(model, x, sigmas, ctx)
    finally:
        ctx.close()
    denoised = x if last["denoised"] is None else last["denoised"]
    return SampleResult(latent=(x.float() / sd.latent_scale).cpu(), denoised=(denoised.float() / sd.latent_scale).cpu())


def _keep_unmasked(model, schedule: DiscreteSchedule, mask: torch.Tensor, start: torch.Tensor, noise: torch.Tensor):
    """The denoiser seen through an inpainting mask: outside the mask the model is shown the original latent noised
    to the current sigma, and its answer there is the original latent, so every sampler converges to it."""

    def masked(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - mask
        x = x * mask + schedule.noise_scaling(sigma, noise, start, max_denoise=False) * keep
        return model(x, sigma) * mask + start * keep

    return masked


def sample_ksampler(sd, positive, negative, latent, *, seed: int, steps: int, cfg: float, sampler_name: str,
                    scheduler: str, denoise: float = 1.0, add_noise: bool = True, start_step: int | None = None,
                    end_step: int | None = None, force_full_denoise: bool = False, **options) -> SampleResult:
    """KSampler / KSamplerAdvanced: the sigmas of (scheduler, steps, denoise), cut to the step range, then
    sample_along. Options are sample_along's (callback, check_interrupt, batch_index, noise_mask)."""
    sampler = get_sampler(sampler_name)
    sigmas = ksampler_sigmas(sd.schedule, scheduler, steps, denoise, sampler.discards_penultimate_sigma)
    sigmas = step_range(sigmas, start_step, end_step, force_full_denoise)
    return sample_along(sd, positive, negative, latent, sigmas, sampler=sampler, seed=seed, cfg=cfg,
                        add_noise=add_noise, **options)
