"""KSampler end to end against diffusers' UNet and Euler schedulers, configured as ComfyUI samples.

This checks the whole chain at once with an independent implementation of each part (diffusers' UNet, scheduler
steps and noise handling): the seed's CPU noise, its scaling at sigma_max, the UNet called at the rounded timestep
on x / sqrt(sigma^2 + 1), CFG, and the step rule. ComfyUI's euler/normal equals EulerDiscreteScheduler given
ComfyUI's sigmas, with the initial noise scaled by sqrt(1 + sigma_max^2) and the UNet called at round(t).
"""

import math

import pytest
import torch

from nodegraph.sd.sampling import initial_noise, ksampler_sigmas, sample_ksampler
from parity import relative_error
from reference import reference_models

# diffusers' schedulers hand torch tensors to numpy in a way numpy 2 warns about: theirs, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SHAPE = (1, 4, 6, 8)
CFG = 7.5


@pytest.fixture(scope="module")
def their_unet(tiny_checkpoint, tiny_config):
    return reference_models(tiny_checkpoint, tiny_config)[0]


def diffusers_run(scheduler, unet, sigmas, start, noise, positive, negative, generator=None) -> torch.Tensor:
    """A diffusers sampling loop as ComfyUI runs it (latents in scaled space); returns the raw VAE latent."""
    sigma_max = float(((1 - scheduler.alphas_cumprod[-1]) / scheduler.alphas_cumprod[-1]) ** 0.5)
    if float(sigmas[0]) >= sigma_max * (1 - 1e-5):  # from the top of the schedule: ComfyUI's max-denoise scaling
        latents = noise * math.sqrt(1 + float(sigmas[0]) ** 2)
    else:
        latents = start * 0.18215 + noise * sigmas[0]
    context = torch.cat([negative, positive])
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        with torch.no_grad():
            eps_negative, eps_positive = unet(model_input, torch.round(t), encoder_hidden_states=context).sample.chunk(2)
        eps = eps_negative + CFG * (eps_positive - eps_negative)
        latents = scheduler.step(eps, t, latents, generator=generator).prev_sample
    return latents / 0.18215


def euler_scheduler(cls, sigmas):
    from diffusers import EulerDiscreteScheduler
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    euler = EulerDiscreteScheduler(**config)
    euler.set_timesteps(sigmas=sigmas.tolist())
    if cls is EulerDiscreteScheduler:
        return euler
    scheduler = cls(**config)  # takes no custom sigmas: given Euler's list of ComfyUI's sigmas and their timesteps
    scheduler.set_timesteps(len(sigmas) - 1)
    scheduler.sigmas, scheduler.timesteps = euler.sigmas.clone(), euler.timesteps.clone()
    return scheduler


@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_euler_normal_is_diffusers_euler_on_comfyuis_sigmas(sd, their_unet, denoise):
    from diffusers import EulerDiscreteScheduler
    positive, negative = sd.encode_prompt(["a red circle"]), sd.encode_prompt(["blurry"])
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) if denoise < 1 else torch.zeros(SHAPE)
    sigmas = ksampler_sigmas(sd.schedule, "normal", 6, denoise)
    expected = diffusers_run(euler_scheduler(EulerDiscreteScheduler, sigmas), their_unet, sigmas, start,
                             initial_noise(SHAPE, 1234), positive, negative)
    actual = sample_ksampler(sd, positive, negative, start, seed=1234, steps=6, cfg=CFG, sampler_name="euler",
                             scheduler="normal", denoise=denoise).latent
    assert expected.std() > 0.1
    assert relative_error(actual, expected) <= 1e-5


def test_euler_ancestral_is_diffusers_euler_ancestral_with_noise_from_seed_plus_one(sd, their_unet):
    from diffusers import EulerAncestralDiscreteScheduler
    positive, negative = sd.encode_prompt(["a blue square"]), sd.encode_prompt([""])
    sigmas = ksampler_sigmas(sd.schedule, "karras", 5)
    expected = diffusers_run(euler_scheduler(EulerAncestralDiscreteScheduler, sigmas), their_unet, sigmas,
                             torch.zeros(SHAPE), initial_noise(SHAPE, 77), positive, negative,
                             generator=torch.Generator().manual_seed(78))
    actual = sample_ksampler(sd, positive, negative, torch.zeros(SHAPE), seed=77, steps=5, cfg=CFG,
                             sampler_name="euler_ancestral", scheduler="karras").latent
    assert relative_error(actual, expected) <= 1e-5


def test_ddim_with_ddim_uniform_is_diffusers_ddim(sd, their_unet):
    """ComfyUI's ddim (Euler in sigma space) along ddim_uniform's timesteps 1 + k * (1000 // steps) is DDIM with eta 0
    on SD's "leading" timesteps with offset 1, stepping to alpha-bar 1 at the end."""
    from diffusers import DDIMScheduler
    positive, negative = sd.encode_prompt(["a green square"]), sd.encode_prompt(["blurry"])
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(5)
    sigmas = ksampler_sigmas(sd.schedule, "ddim_uniform", 5)
    assert scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]
    noise = initial_noise(SHAPE, 21)
    # DDIM works on x / sqrt(1 + sigma^2): ComfyUI starts at noise * sigma, which is that much below unit variance
    latents = noise * sigmas[0] / math.sqrt(1 + float(sigmas[0]) ** 2)
    context = torch.cat([negative, positive])
    for t in scheduler.timesteps:
        with torch.no_grad():
            eps_negative, eps_positive = their_unet(torch.cat([latents, latents]), t,
                                                    encoder_hidden_states=context).sample.chunk(2)
        latents = scheduler.step(eps_negative + CFG * (eps_positive - eps_negative), t, latents, eta=0.0).prev_sample
    actual = sample_ksampler(sd, positive, negative, torch.zeros(SHAPE), seed=21, steps=5, cfg=CFG,
                             sampler_name="ddim", scheduler="ddim_uniform").latent
    assert relative_error(actual, latents / 0.18215) <= 1e-5
