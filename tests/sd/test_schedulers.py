"""The model schedule and every scheduler's sigmas, each against its definition (ComfyUI's, k-diffusion's)."""

import math

import numpy as np
import pytest
import torch

from nodegraph.sd.sampling import DiscreteSchedule, SCHEDULER_NAMES, karras_sigmas, scheduler_sigmas, sd_turbo_sigmas
from nodegraph.sd.sampling.schedulers import beta_cdf, beta_quantile, exponential_sigmas

SCHEDULE = DiscreteSchedule()


def reference_table() -> np.ndarray:
    """SD's sigmas from the definition, in float64: betas linear in sqrt space, alpha-bar their running product."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def test_sigma_table_is_sds_training_schedule_in_float32():
    assert SCHEDULE.sigmas.dtype == torch.float32 and SCHEDULE.sigmas.shape == (1000,)
    np.testing.assert_allclose(SCHEDULE.sigmas.numpy(), reference_table(), rtol=1e-6)
    assert float(SCHEDULE.sigma_min) == pytest.approx(0.0291672, abs=1e-6)
    assert float(SCHEDULE.sigma_max) == pytest.approx(14.614641, abs=1e-5)


def test_unet_is_called_at_the_nearest_timestep_by_log_sigma():
    table = SCHEDULE.sigmas
    for t in (0, 1, 250, 998, 999):
        assert SCHEDULE.timestep(table[t]).item() == t
    # between two entries, the nearer one in log space wins (not the nearer one in sigma)
    low, high = table[500].double(), table[501].double()
    geometric_mid = (low * high).sqrt()
    assert SCHEDULE.timestep((geometric_mid * 0.999).float()).item() == 500
    assert SCHEDULE.timestep((geometric_mid * 1.001).float()).item() == 501
    assert SCHEDULE.timestep(torch.tensor([100.0, 1e-4])).tolist() == [999, 0]  # beyond the table: its ends


def test_sigma_of_a_fractional_timestep_interpolates_log_sigma():
    low, high = SCHEDULE.log_sigmas[10], SCHEDULE.log_sigmas[11]
    assert SCHEDULE.sigma(torch.tensor(10.25)).item() == pytest.approx(math.exp(0.75 * low + 0.25 * high), rel=1e-6)
    # exp(log sigma) in float32 is a rounding below the table's sigma_max: ComfyUI's normal schedule starts there
    assert SCHEDULE.sigma(torch.tensor(999.0)).item() == pytest.approx(SCHEDULE.sigma_max.item(), rel=1e-6)


def timestep_sigmas(timesteps) -> torch.Tensor:
    """sigma(t) by its definition: log sigma interpolated linearly between the table's integer timesteps."""
    log_table = np.log(reference_table())
    return torch.tensor([float(np.exp(np.interp(t, np.arange(1000), log_table))) for t in timesteps] + [0.0])


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_normal_spaces_timesteps_evenly_from_999_to_0(steps):
    expected = timestep_sigmas(np.linspace(999, 0, steps))
    torch.testing.assert_close(scheduler_sigmas(SCHEDULE, "normal", steps), expected, rtol=2e-6, atol=0)


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_sgm_uniform_drops_the_last_of_steps_plus_one_timesteps(steps):
    expected = timestep_sigmas(np.linspace(999, 0, steps + 1)[:-1])
    torch.testing.assert_close(scheduler_sigmas(SCHEDULE, "sgm_uniform", steps), expected, rtol=2e-6, atol=0)


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_simple_takes_every_nth_table_entry_from_the_top(steps):
    expected = [SCHEDULE.sigmas[999 - int(i * 1000 / steps)].item() for i in range(steps)] + [0.0]
    assert scheduler_sigmas(SCHEDULE, "simple", steps).tolist() == expected


def test_ddim_uniform_starts_below_sigma_max():
    sigmas = scheduler_sigmas(SCHEDULE, "ddim_uniform", 10)
    timesteps = [1 + 100 * i for i in reversed(range(10))]  # 901, 801, ..., 1
    assert sigmas.tolist() == [SCHEDULE.sigmas[t].item() for t in timesteps] + [0.0]
    # timesteps 1 + k * (1000 // steps) below 1000: one more step than asked where steps does not divide 1000
    assert len(scheduler_sigmas(SCHEDULE, "ddim_uniform", 3)) == 3 + 1  # 1, 334, 667
    assert len(scheduler_sigmas(SCHEDULE, "ddim_uniform", 13)) == 14 + 1  # 1, 77, ..., 925, 1001 is out


@pytest.mark.parametrize("steps", [4, 10, 25])
def test_karras_and_exponential_match_k_diffusion(steps):
    from kdiffusion_reference import kdiffusion_sampling
    k = kdiffusion_sampling()
    smin, smax = float(SCHEDULE.sigma_min), float(SCHEDULE.sigma_max)
    assert torch.equal(scheduler_sigmas(SCHEDULE, "karras", steps), k.get_sigmas_karras(steps, smin, smax))
    assert torch.equal(karras_sigmas(steps, 0.1, 10.0, rho=3.0), k.get_sigmas_karras(steps, 0.1, 10.0, rho=3.0))
    assert torch.allclose(scheduler_sigmas(SCHEDULE, "exponential", steps),
                          k.get_sigmas_exponential(steps, smin, smax), rtol=1e-6, atol=0)


def test_karras_sigmas_are_float32_like_comfyuis():
    # float64 Karras sigmas move SDE samplers' Brownian samples measurably: ComfyUI computes them in float32
    assert karras_sigmas(10, 0.03, 14.6).dtype == torch.float32


def test_beta_quantiles_equal_scipys():
    from scipy.stats import beta
    for p in (1e-9, 0.01, 0.3, 0.5, 0.77, 0.999999):
        assert beta_quantile(p, 0.6, 0.6) == pytest.approx(beta.ppf(p, 0.6, 0.6), abs=1e-12)
        assert beta_quantile(p, 2.0, 0.5) == pytest.approx(beta.ppf(p, 2.0, 0.5), abs=1e-12)
    assert beta_quantile(0.5, 0.6, 0.6) == 0.5  # exactly: 999 * 0.5 rounds half-even to 500, as with scipy
    for x in (0.01, 0.3, 0.9, 0.999):
        assert beta_cdf(x, 0.6, 0.6) == pytest.approx(beta.cdf(x, 0.6, 0.6), abs=1e-14)


@pytest.mark.parametrize("steps", [1, 4, 20, 60])
def test_beta_scheduler_takes_table_entries_at_beta_quantiles(steps):
    from scipy.stats import beta
    quantiles = np.rint(beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999)
    timesteps = [int(t) for i, t in enumerate(quantiles) if i == 0 or t != quantiles[i - 1]]
    expected = [SCHEDULE.sigmas[t].item() for t in timesteps] + [0.0]
    assert scheduler_sigmas(SCHEDULE, "beta", steps).tolist() == expected


def test_kl_optimal_is_even_in_arctan_sigma():
    sigmas = scheduler_sigmas(SCHEDULE, "kl_optimal", 5)
    angles = torch.atan(sigmas[:-1].double())
    assert torch.allclose(angles.diff(), angles.diff()[0].expand(4), rtol=1e-5)
    assert sigmas[0].item() == pytest.approx(SCHEDULE.sigma_max.item(), rel=1e-6) and sigmas[-1] == 0


def test_linear_quadratic_starts_at_sigma_max_and_ends_at_zero():
    sigmas = scheduler_sigmas(SCHEDULE, "linear_quadratic", 10)
    assert len(sigmas) == 11 and sigmas[0] == SCHEDULE.sigma_max and sigmas[-1] == 0
    assert (sigmas.diff() < 0).all()


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 13])
def test_every_scheduler_gives_decreasing_float32_sigmas_ending_in_zero(name, steps):
    sigmas = scheduler_sigmas(SCHEDULE, name, steps)
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0 and torch.isfinite(sigmas).all()
    assert (sigmas.diff() <= 0).all()
    if name not in ("beta", "ddim_uniform"):  # beta gives a timestep once where quantiles round alike; ddim: above
        assert len(sigmas) == steps + 1


def test_unknown_scheduler_names_the_choices():
    with pytest.raises(ValueError, match="unknown scheduler 'karas'.*karras"):
        scheduler_sigmas(SCHEDULE, "karas", 10)


def test_sd_turbo_uses_every_hundredth_timestep_from_999():
    expected = timestep_sigmas([999, 899, 799, 699])
    torch.testing.assert_close(sd_turbo_sigmas(SCHEDULE, 4), expected, rtol=2e-6, atol=0)
    torch.testing.assert_close(sd_turbo_sigmas(SCHEDULE, 2, denoise=0.5), timestep_sigmas([499, 399]), rtol=2e-6, atol=0)


def test_exponential_is_even_in_log_sigma():
    sigmas = exponential_sigmas(6, 0.1, 10.0)
    assert torch.allclose(sigmas[:-1].log().diff(), torch.full((5,), math.log(0.01) / 5), atol=1e-5)
