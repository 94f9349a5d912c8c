"""The model schedule's prediction types and zero terminal SNR, against diffusers and against their definitions.

- v-prediction, with and without zsnr: our KSampler (euler, "simple" scheduler, which is diffusers' "trailing"
  spacing for step counts dividing 1000) against diffusers' EulerDiscreteScheduler(prediction_type="v_prediction",
  rescale_betas_zero_snr=..., timestep_spacing="trailing"), on the tiny checkpoint's UNet with CFG 5 and the same
  starting noise; the x0 estimate of every step and the result.
- zsnr: the sigma table against diffusers' rescaled betas. The last entry is where the two differ by design: zero
  terminal SNR makes it infinite, and ComfyUI puts alpha-bar 4.897e-8 there (sigma ~4518.8) where diffusers puts
  2^-24 (sigma 4096). So the zsnr run is compared twice: with diffusers handed ComfyUI's sigmas, and with ours run
  along diffusers' own.
- Two conventions differ as configured and are lined up here, not hidden: diffusers' "trailing" Euler starts from
  noise * sigma_max, ComfyUI from noise * sqrt(1 + sigma_max^2); so diffusers is started from ComfyUI's start.
- x0 and img_to_img against ComfyUI's definitions (written out here), end to end with a stand-in UNet.
- lcm: its distilled 50-entry table and boundary condition against their definitions, and KSampler's lcm sampler
  with the "simple" scheduler against diffusers' LCMScheduler (original_inference_steps 50, timestep_scaling 10),
  the same noise draws included (our step noise is a CPU generator seeded with seed + 1, one draw per step).
"""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from parity import relative_error
from nodegraph.sd.sampling import (DiscreteSchedule, initial_noise, sample_along, sample_ksampler,
                                   scheduler_sigmas)
from nodegraph.sd.sampling.schedule import LCM_ORIGINAL_STEPS, ZSNR_LAST_ALPHA_BAR

CFG = 5.0
SEED = 7
SHAPE = (1, 4, 8, 8)
STEPS = 5  # divides 1000: "simple" then picks diffusers' "trailing" timesteps 999, 799, ..., 199
TOLERANCE = 1e-4
DIFFUSERS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def full_table() -> torch.Tensor:
    """SD's 1000 sigmas, written out here: betas linear in sqrt space, float64, stored as float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    return ((1 - alpha_bar) / alpha_bar).sqrt().float()


def euler(prediction_type: str, zsnr: bool):
    from diffusers import EulerDiscreteScheduler
    return EulerDiscreteScheduler(**DIFFUSERS, prediction_type=prediction_type, rescale_betas_zero_snr=zsnr,
                                  timestep_spacing="trailing")


def guided_unet(sd, conds):
    """The UNet's output (eps or v) with CFG applied to it, at an integer timestep: what diffusers' loops step on."""
    positive, negative = conds

    @torch.no_grad()
    def output(model_input: torch.Tensor, timestep) -> torch.Tensor:
        both = sd.unet(torch.cat([model_input] * 2), torch.tensor([float(round(float(timestep)))] * 2),
                       torch.cat([positive, negative]))
        cond, uncond = both.float().chunk(2)
        return uncond + CFG * (cond - uncond)
    return output


@torch.no_grad()
def diffusers_euler(scheduler, unet_output, noise: torch.Tensor):
    """diffusers' Euler loop from ComfyUI's start (noise * sqrt(1 + sigma_max^2)): (result, x0 estimate per step)."""
    x = noise * (1 + scheduler.sigmas[0].double() ** 2).sqrt().float()
    estimates = []
    for t in scheduler.timesteps:
        step = scheduler.step(unet_output(scheduler.scale_model_input(x, t), t), t, x)
        estimates.append(step.pred_original_sample)
        x = step.prev_sample
    return x, estimates


def ours_ksampler(sd, conds, schedule: DiscreteSchedule, sampler_name="euler", scheduler="simple", steps=STEPS):
    """KSampler on `sd` with its schedule replaced: (result, x0 estimate per step), in the sampler's scaled space."""
    model = dataclasses.replace(sd, schedule=schedule)
    estimates = []
    result = sample_ksampler(model, *conds, torch.zeros(SHAPE), seed=SEED, steps=steps, cfg=CFG,
                             sampler_name=sampler_name, scheduler=scheduler,
                             callback=lambda step, total, denoised: estimates.append(denoised.clone()))
    return result.latent * sd.latent_scale, estimates


def worst(ours: list, theirs: list) -> float:
    assert len(ours) == len(theirs)
    return max(relative_error(a, b) for a, b in zip(ours, theirs))


# --- the default path -----------------------------------------------------------------------------------------


def test_the_default_schedule_is_sd_eps_on_the_full_table():
    schedule = DiscreteSchedule()
    assert (schedule.prediction, schedule.zsnr, schedule.original_steps, schedule.skip) == ("eps", False, None, 1)
    assert torch.equal(schedule.sigmas, full_table())
    again = schedule.with_prediction("eps")
    assert torch.equal(again.sigmas, schedule.sigmas) and torch.equal(again.log_sigmas, schedule.log_sigmas)


def test_an_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="unknown prediction 'v_prediction'"):
        DiscreteSchedule(prediction="v_prediction")


# --- zero terminal SNR ----------------------------------------------------------------------------------------


def test_zsnr_table_is_diffusers_rescaled_betas_below_the_top():
    theirs_scheduler = euler("v_prediction", zsnr=True)
    theirs = ((1 - theirs_scheduler.alphas_cumprod) / theirs_scheduler.alphas_cumprod).sqrt()
    ours = DiscreteSchedule(zsnr=True).sigmas
    elementwise = ((ours[:-1].double() - theirs[:-1].double()).abs() / theirs[:-1].double()).max()
    assert float(elementwise) <= 5e-5  # float32 betas on diffusers' side, float64 on ComfyUI's
    plain = full_table()
    assert relative_error(ours[:1], plain[:1]) <= 1e-6, "the rescaling keeps the first timestep's noise level"
    assert bool((ours[1:] > plain[1:]).all()), "and raises every other one"


def test_zsnr_top_sigma_is_comfyuis_finite_stand_in_for_infinity():
    schedule = DiscreteSchedule(zsnr=True)
    expected = math.sqrt((1 - ZSNR_LAST_ALPHA_BAR) / ZSNR_LAST_ALPHA_BAR)
    assert math.isclose(float(schedule.sigma_max), expected, rel_tol=1e-6)
    assert 4518 < float(schedule.sigma_max) < 4519
    assert float(euler("v_prediction", zsnr=True).sigmas[0]) == 4096.0  # diffusers' own stand-in, 2^-24
    # finite all the way through: the model input at the top is the noise itself, to 1e-7
    x = torch.randn(SHAPE)
    top = schedule.sigma_max
    assert torch.isfinite(schedule.model_input(top, x * (1 + top**2).sqrt())).all()
    assert relative_error(schedule.model_input(top, x * (1 + top**2).sqrt()), x) <= 1e-6


@pytest.mark.parametrize("zsnr", [False, True])
def test_simple_scheduler_is_diffusers_trailing_spacing(zsnr):
    ours = scheduler_sigmas(DiscreteSchedule(prediction="v", zsnr=zsnr), "simple", STEPS)
    scheduler = euler("v_prediction", zsnr)
    scheduler.set_timesteps(STEPS)
    assert scheduler.timesteps.tolist() == [999.0, 799.0, 599.0, 399.0, 199.0]
    assert relative_error(ours[1:], scheduler.sigmas[1:]) <= 1e-5
    assert float(ours[-1]) == 0.0
    if not zsnr:
        assert relative_error(ours[:1], scheduler.sigmas[:1]) <= 1e-5


# --- v-prediction against diffusers ---------------------------------------------------------------------------


@pytest.mark.parametrize("zsnr", [False, True])
def test_v_prediction_ksampler_matches_diffusers_euler(sd, conds, zsnr):
    schedule = DiscreteSchedule(prediction="v", zsnr=zsnr)
    ours, our_estimates = ours_ksampler(sd, conds, schedule)
    scheduler = euler("v_prediction", zsnr)
    if zsnr:  # ComfyUI's top sigma (4518.8), not diffusers' 4096; the rest are the same
        scheduler.set_timesteps(sigmas=scheduler_sigmas(schedule, "simple", STEPS).tolist())
    else:
        scheduler.set_timesteps(STEPS)
    theirs, their_estimates = diffusers_euler(scheduler, guided_unet(sd, conds), initial_noise(SHAPE, SEED))
    assert worst(our_estimates, their_estimates) <= TOLERANCE
    assert relative_error(ours, theirs) <= TOLERANCE
    eps, _ = ours_ksampler(sd, conds, DiscreteSchedule(zsnr=zsnr))
    assert relative_error(eps, ours) > 0.5, "read as noise, the same UNet output gives another picture"


def test_v_prediction_with_zsnr_along_diffusers_own_sigmas_matches_it(sd, conds):
    """diffusers' own zsnr schedule (top 4096) run through our schedule: the top maps to timestep 999 as well."""
    scheduler = euler("v_prediction", zsnr=True)
    scheduler.set_timesteps(STEPS)
    noise = initial_noise(SHAPE, SEED)
    theirs, their_estimates = diffusers_euler(scheduler, guided_unet(sd, conds), noise)
    model = dataclasses.replace(sd, schedule=DiscreteSchedule(prediction="v", zsnr=True))
    estimates = []
    result = sample_along(model, *conds, torch.zeros(SHAPE), scheduler.sigmas.float(), sampler="euler", seed=SEED,
                          cfg=CFG, callback=lambda step, total, denoised: estimates.append(denoised.clone()))
    assert worst(estimates, their_estimates) <= TOLERANCE
    assert relative_error(result.latent * sd.latent_scale, theirs) <= TOLERANCE


# --- x0 and img_to_img against their definitions --------------------------------------------------------------


class StandInUNet:
    """A fixed smooth function of (x, t, context), recording the inputs it was called with."""

    def __init__(self):
        self.inputs = []

    def __call__(self, x, t, context):
        self.inputs.append((x.clone(), t.clone()))
        return torch.tanh(x * 0.5 + t.reshape(-1, 1, 1, 1) / 1000 + context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1))


@pytest.mark.parametrize("prediction", ["x0", "img_to_img"])
def test_x0_predictions_take_the_output_as_the_estimate(prediction):
    schedule = DiscreteSchedule(prediction=prediction)
    sigma, x, output = torch.tensor([3.0, 0.5]), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(schedule.denoised(sigma, output, x), output)
    expected_input = x if prediction == "img_to_img" else x / (sigma.reshape(-1, 1, 1, 1) ** 2 + 1).sqrt()
    assert relative_error(schedule.model_input(sigma, x), expected_input) <= 1e-7


@pytest.mark.parametrize("prediction", ["x0", "img_to_img"])
def test_x0_predictions_sample_as_a_hand_written_euler_loop(prediction):
    unet, context = StandInUNet(), torch.randn(1, 77, 32)
    schedule = DiscreteSchedule(prediction=prediction)
    model = SimpleNamespace(unet=unet, schedule=schedule, device=torch.device("cpu"), latent_scale=1.0)
    sigmas = scheduler_sigmas(schedule, "simple", 4)
    result = sample_along(model, context, None, torch.zeros(SHAPE), sigmas, sampler="euler", seed=SEED, cfg=1.0)

    table = full_table()
    x = initial_noise(SHAPE, SEED) * (1 + sigmas[0] ** 2).sqrt()
    for sigma, sigma_next, timestep in zip(sigmas[:-1], sigmas[1:], [999, 749, 499, 249]):
        assert math.isclose(float(sigma), float(table[timestep]), rel_tol=1e-7)
        model_input = x if prediction == "img_to_img" else x / (sigma**2 + 1).sqrt()
        denoised = torch.tanh(model_input * 0.5 + timestep / 1000 + context.mean())
        x = x + (sigma_next - sigma) * (x - denoised) / sigma
    assert [float(t) for _, t in unet.inputs] == [999.0, 749.0, 499.0, 249.0]
    assert relative_error(result.latent, x) <= 1e-6


# --- lcm --------------------------------------------------------------------------------------------------------


def test_lcm_table_is_every_20th_timestep_from_the_top():
    schedule = DiscreteSchedule().with_prediction("lcm")
    timesteps = [20 * k + 19 for k in range(50)]
    assert schedule.original_steps == LCM_ORIGINAL_STEPS == 50 and schedule.skip == 20
    assert torch.equal(schedule.sigmas, full_table()[timesteps])
    assert schedule.timestep(schedule.sigmas).tolist() == [float(t) for t in timesteps]
    assert relative_error(schedule.sigma(torch.tensor(timesteps, dtype=torch.float32)), schedule.sigmas) <= 1e-6
    # a sigma between two entries maps to the nearer of them (in log sigma)
    between = (schedule.log_sigmas[10] * 0.6 + schedule.log_sigmas[11] * 0.4).exp()
    assert float(schedule.timestep(between.reshape(1))) == 219.0
    # halfway between two distilled timesteps, log sigma halfway between their entries
    assert math.isclose(float(schedule.sigma(torch.tensor(229.0)).log()),
                        float((schedule.log_sigmas[10] + schedule.log_sigmas[11]) / 2), rel_tol=1e-6)


def test_lcm_denoised_is_the_consistency_boundary_condition():
    """ComfyUI's LCM: x0 = x - eps * sigma, then c_skip * x + c_out * x0 at the timestep times 10, sigma_data 0.5."""
    schedule = DiscreteSchedule().with_prediction("lcm")
    sigma = schedule.sigmas[[0, 3, 49]]  # timesteps 19, 79, 999
    x, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    scaled = torch.tensor([190.0, 790.0, 9990.0]).reshape(-1, 1, 1, 1)
    c_skip, c_out = 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25).sqrt()
    expected = c_out * (x - eps * sigma.reshape(-1, 1, 1, 1)) + c_skip * x
    assert relative_error(schedule.denoised(sigma, eps, x), expected) <= 1e-7
    plain = DiscreteSchedule().denoised(sigma, eps, x)
    assert relative_error(schedule.denoised(sigma[:1], eps[:1], x[:1]), plain[:1]) > 1e-6, "c_skip counts near t=0"


def test_lcm_normal_scheduler_spaces_the_distilled_timesteps():
    """normal: timesteps linear from 999 down to 19, each read off the distilled table (log-linear in between)."""
    schedule = DiscreteSchedule().with_prediction("lcm")
    expected = []
    for t in torch.linspace(999, 19, 4):
        position = (float(t) - 19) / 20
        low, high = math.floor(position), math.ceil(position)
        weight = position - low
        expected.append(math.exp((1 - weight) * float(schedule.log_sigmas[low]) + weight * float(schedule.log_sigmas[high])))
    ours = scheduler_sigmas(schedule, "normal", 4)
    assert relative_error(ours[:-1], torch.tensor(expected)) <= 1e-6 and float(ours[-1]) == 0.0
    assert math.isclose(float(ours[-2]), float(schedule.sigma_min), rel_tol=1e-6)  # down to timestep 19, not 0


@pytest.mark.parametrize("steps", [4, 6])
def test_lcm_ksampler_matches_diffusers_lcm_scheduler(sd, conds, steps):
    from diffusers import LCMScheduler
    schedule = DiscreteSchedule().with_prediction("lcm")
    ours, our_estimates = ours_ksampler(sd, conds, schedule, sampler_name="lcm", steps=steps)

    scheduler = LCMScheduler(**DIFFUSERS, original_inference_steps=50, timestep_scaling=10.0)
    scheduler.set_timesteps(steps)
    sigmas = scheduler_sigmas(schedule, "simple", steps)
    assert schedule.timestep(sigmas[:-1]).tolist() == scheduler.timesteps.float().tolist()
    unet_output, generator = guided_unet(sd, conds), torch.Generator().manual_seed(SEED + 1)
    x, their_estimates = initial_noise(SHAPE, SEED), []  # variance-preserving: LCM starts from unit noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            step = scheduler.step(unet_output(x, t), t, x, generator=generator)
            their_estimates.append(step.denoised)
            x = step.prev_sample
    assert worst(our_estimates, their_estimates) <= TOLERANCE
    assert relative_error(ours, x) <= TOLERANCE
    eps, _ = ours_ksampler(sd, conds, DiscreteSchedule(), sampler_name="lcm", steps=steps)
    assert relative_error(eps, ours) > 1e-3, "the distilled table moves the steps"
