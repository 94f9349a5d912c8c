"""The k-diffusion family of samplers against k-diffusion 0.1.1's own, fp32 on the CPU, on one real denoiser (the
tiny random checkpoint's UNet behind CFG) and on the exact denoiser of Gaussian data. Same model, sigmas and noise
in, the same latent out.

ComfyUI changed two of these since k-diffusion 0.1.1 beyond rounding. lms ends on the denoised estimate instead of a
last multistep to sigma 0: it is checked as k-diffusion's steps down to the last positive sigma, then one model
evaluation there. dpmpp_sde asks its Brownian tree for noise at the sigmas themselves, k-diffusion at
exp(log(sigma)): both sides get one tree whose query times are snapped to the same values (see snapped).
"""

import pytest
import torch

from kdiffusion_reference import kdiffusion_sampling, missing
from parity import relative_error
from nodegraph.sd.sampling.context import SamplerContext
from nodegraph.sd.sampling.guidance import GuidedDenoiser
from nodegraph.sd.sampling.k_samplers import K_SAMPLERS, lms_coefficient
from nodegraph.sd.sampling.schedule import DiscreteSchedule

TOLERANCE = 1e-5
SEED = 1234
ANCESTRAL = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral")
SDE = ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde")
IN_KDIFFUSION = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                 "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde")
# torchsde rounds the tree's end to the tolerance's digits, so a query at sigma_max itself is "past" it and clamped:
# harmless, and ComfyUI's runs warn the same.
pytestmark = pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning")


def karras_sigmas(steps: int, schedule: DiscreteSchedule, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps)
    low, high = float(schedule.sigma_min) ** (1 / rho), float(schedule.sigma_max) ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1)])


@pytest.fixture(scope="module")
def kd():
    return kdiffusion_sampling()


@pytest.fixture(scope="module")
def denoiser(sd, conds):
    return GuidedDenoiser(sd.unet, DiscreteSchedule(), *conds, cfg=5.0)


@pytest.fixture(scope="module")
def sigmas():
    return karras_sigmas(7, DiscreteSchedule())


def start_latent(batch: int, sigmas: torch.Tensor) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(7)) * sigmas[0]


def generator_noise(x: torch.Tensor, seed: int):
    """ComfyUI's ancestral noise on the CPU: one generator seeded seed + 1, one draw per call."""
    generator = torch.Generator().manual_seed(seed + 1)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator)


def snapped(noise, sigmas: torch.Tensor):
    """`noise` asked at the nearest of the sigmas and their log-midpoints (when within 1e-5). k-diffusion 0.1.1's
    dpmpp_sde asks the Brownian tree at exp(log(sigma)), an ulp off the sigma that ComfyUI asks at; torchsde rounds
    query times to its tolerance, so an ulp can land on other increments (1e-4 apart in the result). Snapped, both
    sides get the same noise."""
    positive = sigmas[sigmas > 0]
    lambdas = -positive.log()
    known = torch.cat([positive, (-(lambdas[:-1] + 0.5 * (lambdas[1:] - lambdas[:-1]))).exp()])

    def snap(t):
        nearest = known[(known - t).abs().argmin()]
        return nearest if (nearest - t).abs() <= 1e-5 * nearest else t
    return lambda sigma, sigma_next: noise(snap(sigma), snap(sigma_next))


def reference_noise(kd, name: str, x: torch.Tensor, sigmas: torch.Tensor, seed: int):
    """A fresh noise sampler of the kind `name` draws from, or None for the deterministic samplers."""
    if name in ANCESTRAL:
        return generator_noise(x, seed)
    if name in SDE:
        tree = kd.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed)
        return snapped(tree, sigmas) if name == "dpmpp_sde" else tree
    return None


def run_reference(kd, name: str, denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise=None) -> torch.Tensor:
    model = lambda x, sigma, **extra: denoiser(x, sigma)  # noqa: E731 (k-diffusion passes its extra_args along)
    kwargs = {} if noise is None else {"noise_sampler": noise}
    if name == "lms":  # k-diffusion 0.1.1 takes a multistep to sigma 0 where ComfyUI ends on the estimate
        x = kd.sample_lms(model, x, sigmas[:-1], disable=True)
        return denoiser(x, sigmas[-2] * x.new_ones([x.shape[0]]))
    return getattr(kd, f"sample_{name}")(model, x, sigmas, disable=True, **kwargs)


def run_ours(name: str, denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise=None, seed=None) -> torch.Tensor:
    return K_SAMPLERS[name](denoiser, x, sigmas, SamplerContext(DiscreteSchedule(), seed=seed, noise_sampler=noise))


def gaussian_denoiser(calls: list | None = None):
    """The exact x0 estimate for unit-variance Gaussian data: cheap, and its slope changes fast at low sigma, where
    the tiny UNet's barely does (so it tells last-step rules apart)."""
    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(sigma)
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)
    return model


def test_every_sampler_is_in_k_diffusion():
    assert set(K_SAMPLERS) == set(IN_KDIFFUSION)


# batch 2 for one ancestral and two SDE samplers; dpmpp_sde also at 6 steps, where unsnapped noise would differ
EXTRA_CASES = [(2, 7, "euler_ancestral"), (2, 7, "dpmpp_2m_sde"), (1, 6, "dpmpp_sde"), (2, 8, "dpmpp_sde")]


@pytest.mark.parametrize("batch,steps,name", [(1, 7, name) for name in IN_KDIFFUSION] + EXTRA_CASES)
def test_sampler_matches_k_diffusion(kd, denoiser, batch, steps, name):
    sigmas = karras_sigmas(steps, DiscreteSchedule())
    x = start_latent(batch, sigmas)
    expected = run_reference(kd, name, denoiser, x, sigmas, reference_noise(kd, name, x, sigmas, SEED))
    actual = run_ours(name, denoiser, x, sigmas, reference_noise(kd, name, x, sigmas, SEED))
    assert torch.isfinite(expected).all()
    assert relative_error(x, expected) > 0.05, "the reference should have moved away from the input"
    assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize("name", IN_KDIFFUSION)
def test_sampler_matches_k_diffusion_on_gaussian_data(kd, sigmas, name):
    x = start_latent(1, sigmas)
    expected = run_reference(kd, name, gaussian_denoiser(), x, sigmas, reference_noise(kd, name, x, sigmas, SEED))
    actual = run_ours(name, gaussian_denoiser(), x, sigmas, reference_noise(kd, name, x, sigmas, SEED))
    assert relative_error(x, expected) > 0.5, "the reference should have moved away from the input"
    assert relative_error(actual, expected) <= TOLERANCE


def test_lms_ends_on_the_estimate_unlike_k_diffusion_0_1_1(kd, sigmas):
    x = start_latent(1, sigmas)
    ours = run_ours("lms", gaussian_denoiser(), x, sigmas)
    before_last = run_ours("lms", gaussian_denoiser(), x, sigmas[:-1])
    assert torch.equal(ours, gaussian_denoiser()(before_last, sigmas[-2] * x.new_ones([1])))
    kd_full = kd.sample_lms(lambda x, sigma, **extra: gaussian_denoiser()(x, sigma), x, sigmas, disable=True)
    assert relative_error(ours, kd_full) > 10 * TOLERANCE, "the check should tell the two last steps apart"


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2s_ancestral"])
def test_default_ancestral_noise_is_comfyuis(kd, denoiser, sigmas, name):
    x = start_latent(1, sigmas)
    expected = run_reference(kd, name, denoiser, x, sigmas, generator_noise(x, SEED))
    assert relative_error(run_ours(name, denoiser, x, sigmas, seed=SEED), expected) <= TOLERANCE
    assert relative_error(run_ours(name, denoiser, x, sigmas, seed=SEED + 1), expected) > 1e-2, "noise should matter"


@pytest.mark.parametrize("name", SDE)
def test_default_sde_noise_is_comfyuis(kd, denoiser, sigmas, name):
    x = start_latent(1, sigmas)
    tree = kd.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=SEED)
    if name == "dpmpp_sde":  # k-diffusion's own asks at other times (see snapped): ours, on k-diffusion's tree
        expected = run_ours(name, denoiser, x, sigmas, tree)
    else:
        expected = run_reference(kd, name, denoiser, x, sigmas, tree)
    assert relative_error(run_ours(name, denoiser, x, sigmas, seed=SEED), expected) <= TOLERANCE
    assert relative_error(run_ours(name, denoiser, x, sigmas, seed=SEED + 1), expected) > 1e-2, "noise should matter"


@pytest.mark.parametrize("name", IN_KDIFFUSION)
def test_report_follows_each_step_once(name, sigmas):
    x = start_latent(1, sigmas)
    seen = []
    ctx = SamplerContext(DiscreteSchedule(), seed=SEED, callback=lambda i, x, denoised: seen.append((i, x, denoised)))
    K_SAMPLERS[name](gaussian_denoiser([]), x, sigmas, ctx)
    assert [i for i, _, _ in seen] == list(range(len(sigmas) - 1))
    assert torch.equal(seen[0][1], x)
    assert torch.allclose(seen[0][2], x / (1 + sigmas[0] ** 2))


@pytest.mark.parametrize("name", IN_KDIFFUSION)
def test_raising_in_the_callback_stops_the_sampler(name, sigmas):
    calls = []

    class Stop(Exception):
        pass

    def stop(i, x, denoised):
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        K_SAMPLERS[name](gaussian_denoiser(calls), start_latent(1, sigmas), sigmas,
                         SamplerContext(DiscreteSchedule(), seed=SEED, callback=stop))
    assert calls[-1].item() == sigmas[2].item(), "no model evaluation after the callback raised"


@pytest.mark.parametrize("steps", [4, 8, 25])
def test_lms_coefficients_match_numeric_integration(steps):
    try:
        from scipy import integrate
    except ImportError:
        missing("scipy")
    nodes = karras_sigmas(steps, DiscreteSchedule()).tolist()
    for i in range(len(nodes) - 2):  # the last step (to sigma 0) is not a multistep one
        order = min(i + 1, 4)
        for j in range(order):
            def basis(tau, j=j):
                product = 1.0
                for k in range(order):
                    if k != j:
                        product *= (tau - nodes[i - k]) / (nodes[i - j] - nodes[i - k])
                return product

            expected = integrate.quad(basis, nodes[i], nodes[i + 1], epsabs=0, epsrel=1e-13)[0]
            assert abs(lms_coefficient(nodes, i, j, order) - expected) <= 1e-10 * max(abs(expected), 1e-3)
        # the basis polynomials sum to 1, so the weights sum to the step
        total = sum(lms_coefficient(nodes, i, j, order) for j in range(order))
        assert total == pytest.approx(nodes[i + 1] - nodes[i], rel=1e-12)


def test_lms_coefficient_needs_enough_past_steps():
    with pytest.raises(ValueError):
        lms_coefficient([3.0, 2.0, 1.0, 0.5], 1, 0, 3)
