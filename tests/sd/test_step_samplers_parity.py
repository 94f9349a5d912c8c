"""ddpm and lcm against diffusers' DDPMScheduler and LCMScheduler, on the same network, timesteps and noise.

One network is behind both sides: the tiny random checkpoint's UNet with CFG 5. Our samplers call it through
GuidedDenoiser (sigma space, CFG on the x0 estimates); diffusers' schedulers get the UNet's own output (eps or v) at
the integer timestep, CFG applied to it, for their variance-preserving sample. The sigmas are the schedule table's
entries at those timesteps, so the same timesteps are evaluated on the same inputs (up to float rounding).

diffusers is handed the timesteps as a custom schedule (its alpha-bar table is its own float32 one, equal to ours
within rounding). Its step noise comes from a seeded CPU generator; our samplers get the same draws through
ctx.noise_sampler. LCMScheduler's consistency boundary scaling is switched off (timestep_scaling huge, so
c_skip ~ 0 and c_out ~ 1): ComfyUI's lcm sampler has none, it belongs to LCM checkpoints' model schedule.
"""

import pytest
import torch

from parity import relative_error
from nodegraph.sd.sampling.context import SamplerContext
from nodegraph.sd.sampling.guidance import GuidedDenoiser
from nodegraph.sd.sampling.schedule import DiscreteSchedule
from nodegraph.sd.sampling.step_samplers import STEP_SAMPLERS

CFG = 5.0
# 7 steps; all on LCMScheduler's 50-step distillation grid (20k - 1), so it takes them without a warning.
TIMESTEPS = [999, 839, 679, 519, 359, 199, 39]
SPLIT_END = 19
TOLERANCE = 1e-5
SHAPE = (1, 4, 8, 8)



def sigmas_for(schedule: DiscreteSchedule, timesteps: list[int], end: int | None = None) -> torch.Tensor:
    last = torch.zeros(1) if end is None else schedule.sigmas[[end]]
    return torch.cat([schedule.sigmas[timesteps], last])


def start_latent(sigma0: torch.Tensor, seed: int = 3) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * (1 + sigma0**2).sqrt()


def seeded_draws(seed: int):
    """Unit noise from a CPU generator, one [1, 4, 8, 8] draw per call: what diffusers' randn_tensor draws."""
    generator = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(SHAPE, generator=generator)


def guided_unet(sd, conds):
    positive, negative = conds

    @torch.no_grad()
    def output(x_vp: torch.Tensor, timestep) -> torch.Tensor:
        both = sd.unet(torch.cat([x_vp, x_vp]), torch.tensor([float(timestep)] * 2), torch.cat([positive, negative]))
        cond, uncond = both.float().chunk(2)
        return uncond + CFG * (cond - uncond)
    return output


def run_ours(name, sd, conds, sigmas, x, prediction="eps", **ctx_options):
    schedule = DiscreteSchedule(prediction=prediction)
    denoiser = GuidedDenoiser(sd.unet, schedule, *conds, cfg=CFG)
    return STEP_SAMPLERS[name](denoiser, x.clone(), sigmas.clone(), SamplerContext(schedule, **ctx_options))


def diffusers_scheduler(name: str, prediction: str):
    from diffusers import DDPMScheduler, LCMScheduler
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  prediction_type="epsilon" if prediction == "eps" else "v_prediction")
    if name == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    return LCMScheduler(timestep_scaling=1e6, original_inference_steps=50, **common)


@torch.no_grad()
def diffusers_run(name, unet_output, x, timesteps, sigma0, prediction, noise_seed, stop_before=None):
    """diffusers' loop over `timesteps` from x (sigma space); with stop_before, the loop stops before stepping from
    that timestep, so the result is the sample at it (converted back to sigma space)."""
    scheduler = diffusers_scheduler(name, prediction)
    scheduler.set_timesteps(timesteps=timesteps)
    generator = torch.Generator().manual_seed(noise_seed)
    sample = x / (1 + sigma0.double() ** 2).sqrt().float()
    for t in scheduler.timesteps:
        if int(t) == stop_before:
            return sample / scheduler.alphas_cumprod[t].sqrt()
        sample = scheduler.step(unet_output(sample, t), t, sample, generator=generator).prev_sample
    return sample


@pytest.mark.parametrize("name", ["ddpm", "lcm"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_matches_diffusers_scheduler(sd, conds, name, prediction):
    schedule = DiscreteSchedule(prediction=prediction)
    sigmas = sigmas_for(schedule, TIMESTEPS)
    x = start_latent(sigmas[0])
    ours = run_ours(name, sd, conds, sigmas, x, prediction, noise_sampler=seeded_draws(42))
    expected = diffusers_run(name, guided_unet(sd, conds), x, TIMESTEPS, sigmas[0], prediction, noise_seed=42)
    assert relative_error(ours, x) > 1e-1, "sampling should move the latent"
    assert relative_error(ours, expected) <= TOLERANCE


def test_ddpm_that_stops_above_zero_matches_diffusers_at_that_timestep(sd, conds):
    """Sigmas that end above 0 (a split run): the last step draws noise and x is scaled back to sigma space."""
    schedule = DiscreteSchedule()
    sigmas = sigmas_for(schedule, TIMESTEPS, SPLIT_END)
    x = start_latent(sigmas[0])
    ours = run_ours("ddpm", sd, conds, sigmas, x, noise_sampler=seeded_draws(42))
    expected = diffusers_run("ddpm", guided_unet(sd, conds), x, TIMESTEPS + [SPLIT_END], sigmas[0], "eps",
                             noise_seed=42, stop_before=SPLIT_END)
    assert relative_error(ours, x) > 1e-1
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("name", ["ddpm", "lcm"])
def test_the_noise_makes_a_difference(sd, conds, name):
    sigmas = sigmas_for(DiscreteSchedule(), TIMESTEPS)
    x = start_latent(sigmas[0])
    first = run_ours(name, sd, conds, sigmas, x, noise_sampler=seeded_draws(42))
    other = run_ours(name, sd, conds, sigmas, x, noise_sampler=seeded_draws(43))
    assert relative_error(first, other) > 100 * TOLERANCE


@pytest.mark.parametrize("name", ["ddpm", "lcm"])
def test_default_noise_is_the_seeded_step_noise(sd, conds, name):
    """Without an injected noise sampler the step noise is ComfyUI's default: a CPU generator seeded with seed + 1,
    one whole-batch draw per step that has a next sigma above 0."""
    sigmas = sigmas_for(DiscreteSchedule(), TIMESTEPS)
    x = start_latent(sigmas[0])
    calls = []
    draws = seeded_draws(78)

    def recorded(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return draws(sigma, sigma_next)

    seeded = run_ours(name, sd, conds, sigmas, x, seed=77)
    injected = run_ours(name, sd, conds, sigmas, x, noise_sampler=recorded)
    assert torch.equal(seeded, injected)
    assert calls == [(float(sigmas[i]), float(sigmas[i + 1])) for i in range(len(TIMESTEPS) - 1)]


@pytest.mark.parametrize("name", ["ddpm", "lcm"])
def test_reports_once_per_step(sd, conds, name):
    sigmas = sigmas_for(DiscreteSchedule(), TIMESTEPS)
    x = start_latent(sigmas[0])
    seen = []
    run_ours(name, sd, conds, sigmas, x, seed=5, callback=lambda i, xi, d: seen.append((i, xi, d)))
    assert [i for i, _, _ in seen] == list(range(len(TIMESTEPS)))
    denoiser = GuidedDenoiser(sd.unet, DiscreteSchedule(), *conds, cfg=CFG)
    with torch.no_grad():
        first_denoised = denoiser(x, sigmas[:1])
    assert torch.equal(seen[0][1], x) and torch.equal(seen[0][2], first_denoised)
