"""uni_pc / uni_pc_bh2 against diffusers' UniPCMultistepScheduler, and against the UniPC equations written out here.

One network is behind every side: the tiny random checkpoint's UNet with CFG 5. Our samplers call it through
GuidedDenoiser (sigma space, CFG on the x0 estimates); the references call the UNet themselves on the
variance-preserving sample at the integer timestep, with CFG on the raw output, as diffusers' pipelines do. The
sigmas are the schedule table's own entries at integer timesteps, so both sides evaluate the UNet at the same
timesteps on the same inputs (up to float rounding).

ComfyUI steps to sigma 0.001 where the sigmas end in 0; diffusers is handed that list directly (its sigmas and
timesteps replaced after set_timesteps), so it takes exactly ComfyUI's steps.
"""

import math
import warnings

import numpy as np
import pytest
import torch

from parity import relative_error
from nodegraph.sd.sampling.context import SamplerContext
from nodegraph.sd.sampling.guidance import GuidedDenoiser
from nodegraph.sd.sampling.schedule import DiscreteSchedule
from nodegraph.sd.sampling.uni_pc import UNI_PC_SAMPLERS

CFG = 5.0
TIMESTEPS = [999, 839, 679, 519, 359, 199, 39]  # 7 steps, each sigma a table entry
SPLIT_END = 19  # a run that stops at this timestep's sigma instead of 0 (as a KSamplerAdvanced split does)
VARIANTS = {"uni_pc": "bh1", "uni_pc_bh2": "bh2"}
TOLERANCE = 1e-5



def sigmas_for(schedule: DiscreteSchedule, timesteps: list[int], end: int | None) -> torch.Tensor:
    """The table's sigmas at `timesteps`, then 0 (end None) or the sigma at timestep `end`."""
    last = torch.zeros(1) if end is None else schedule.sigmas[[end]]
    return torch.cat([schedule.sigmas[timesteps], last])


def start_latent(sigma0: torch.Tensor, seed: int = 3) -> torch.Tensor:
    """Pure noise at sigma0 in sigma space (unit variance once divided by sqrt(1 + sigma0^2))."""
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * (1 + sigma0**2).sqrt()


def guided_unet(sd, conds):
    """(x_vp, integer timestep) -> the UNet's output with CFG on it (eps or v, whatever the model predicts)."""
    positive, negative = conds

    @torch.no_grad()
    def output(x_vp: torch.Tensor, timestep: int) -> torch.Tensor:
        both = sd.unet(torch.cat([x_vp, x_vp]).float(), torch.tensor([float(timestep)] * 2),
                       torch.cat([positive, negative]))
        cond, uncond = both.float().chunk(2)
        return uncond + CFG * (cond - uncond)
    return output


def run_ours(name, sd, conds, sigmas, x, prediction="eps", callback=None, seed=None):
    schedule = DiscreteSchedule(prediction=prediction)
    denoiser = GuidedDenoiser(sd.unet, schedule, *conds, cfg=CFG)
    ctx = SamplerContext(schedule, seed=seed, callback=callback)
    return UNI_PC_SAMPLERS[name](denoiser, x.clone(), sigmas.clone(), ctx)


def diffusers_uni_pc(unet_output, x: torch.Tensor, timesteps: list[int], sigmas: torch.Tensor, variant: str,
                     prediction: str) -> torch.Tensor:
    from diffusers import UniPCMultistepScheduler
    scheduler = UniPCMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", solver_order=3, solver_type=variant,
        predict_x0=True, lower_order_final=True, prediction_type="epsilon" if prediction == "eps" else "v_prediction")
    with warnings.catch_warnings():  # diffusers' own numpy call warns under numpy 2; its sigmas are replaced anyway
        warnings.simplefilter("ignore", DeprecationWarning)
        scheduler.set_timesteps(len(timesteps))
    stops = sigmas.clone()
    if stops[-1] == 0:
        stops[-1] = 0.001  # ComfyUI's stand-in for a final 0
    scheduler.timesteps = torch.tensor(timesteps, dtype=torch.int64)
    scheduler.sigmas = stops
    sample = x / (1 + stops[0].double() ** 2).sqrt().float()
    for t in timesteps:
        sample = scheduler.step(unet_output(sample, t), t, sample).prev_sample
    return sample * (1 + stops[-1].double() ** 2).sqrt().float()  # back from VP to sigma space


# --- the UniPC equations (Zhao et al. 2023, data prediction, B(h) variants), written out in float64 --------------

def comfy_vp(sigma: float) -> tuple[float, float, float]:
    """alpha, VP std and lambda = log(alpha / std) of one sigma, as ComfyUI's sigma wrapper rounds them: float32,
    from alpha^2 = 1 / (sigma^2 + 1). Not part of the method, but part of ComfyUI's result: at the 0.001 stand-in
    float32 loses about 5% of std^2, and the last step uses it."""
    s = torch.tensor(sigma, dtype=torch.float32)
    log_alpha = 0.5 * torch.log(1 / (s * s + 1))
    variance = 1.0 - torch.exp(2.0 * log_alpha)
    return math.exp(float(log_alpha)), math.sqrt(float(variance)), float(log_alpha) - 0.5 * math.log(float(variance))


def phi(k: int, z: float) -> float:
    """phi_k(z) = (e^z - sum_{j<k} z^j / j!) / z^k, the exponential integrator's weight functions."""
    if k == 1:
        return math.expm1(z) / z
    return (math.exp(z) - sum(z**j / math.factorial(j) for j in range(k))) / z**k


def reference_uni_pc(unet_output, x: torch.Tensor, timesteps: list[int], sigmas: torch.Tensor, variant: str,
                     prediction: str = "eps") -> torch.Tensor:
    """UniPC multistep as the paper states it: at step n (to stop n) with order p, the predictor
    x_pred = (std_n / std_{n-1}) x - alpha_n (e^{-h} - 1) x0_{n-1} - alpha_n B(h) sum_k a_k D_k,
    D_k = (x0_{n-1-k} - x0_{n-1}) / r_k, r_k = (lambda_{n-1-k} - lambda_{n-1}) / h, and the corrector the same with
    the model's x0 at x_pred as one more point at r = 1; the coefficients solve sum_k a_k r_k^(i-1) = g_i,
    g_i = i! (-h) phi_{i+1}(-h) / B(-h). The reference implementation's shortcuts are kept, as ComfyUI and diffusers
    both have them: a = 1/2 for the second-order predictor, 1/2 for the first-order corrector. The order warms up
    from 1, is at most min(3, steps - 1), drops over the last steps, and the last step is not corrected."""
    stops = [float(s) for s in sigmas]
    if stops[-1] == 0:
        stops[-1] = 0.001
    steps = len(stops) - 1
    top_order = min(3, steps - 1)
    alpha, std, lam = (list(v) for v in zip(*(comfy_vp(s) for s in stops)))

    def x0_at(x_vp: torch.Tensor, n: int) -> torch.Tensor:
        out = unet_output(x_vp.float(), timesteps[n]).double()
        return (x_vp - std[n] * out) / alpha[n] if prediction == "eps" else alpha[n] * x_vp - std[n] * out

    x = x.double() / math.sqrt(1 + stops[0] ** 2)
    x0s = [x0_at(x, 0)]
    for n in range(1, steps + 1):
        p = min(n, top_order, steps + 1 - n)
        h = lam[n] - lam[n - 1]
        z = -h
        b_of_h = z if variant == "bh1" else math.expm1(z)
        g = [math.factorial(i) * z * phi(i + 1, z) / b_of_h for i in range(1, p + 1)]
        r = [(lam[n - 1 - k] - lam[n - 1]) / h for k in range(1, p)]
        d = [(x0s[n - 1 - k] - x0s[n - 1]) / r[k - 1] for k in range(1, p)]
        base = std[n] / std[n - 1] * x - alpha[n] * math.expm1(z) * x0s[n - 1]
        if p == 1:
            a = []
        elif p == 2:
            a = [0.5]
        else:
            a = np.linalg.solve(np.array([[rk ** (i - 1) for rk in r] for i in range(1, p)]), g[:p - 1])
        x_pred = base - alpha[n] * b_of_h * sum((ak * dk for ak, dk in zip(a, d)), torch.zeros_like(x))
        if n == steps:
            x = x_pred
            break
        x0_new = x0_at(x_pred, n)
        c = [0.5] if p == 1 else np.linalg.solve(np.array([[rk ** (i - 1) for rk in r + [1.0]]
                                                           for i in range(1, p + 1)]), g)
        corrected = sum((ck * dk for ck, dk in zip(c[:-1], d)), torch.zeros_like(x)) + c[-1] * (x0_new - x0s[n - 1])
        x = base - alpha[n] * b_of_h * corrected
        x0s.append(x0_new)
    return x / alpha[-1]


# --- tests ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("end", [None, SPLIT_END], ids=["to_zero", "split"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_matches_diffusers_unipc_on_comfyui_sigmas(sd, conds, name, end, prediction):
    schedule = DiscreteSchedule(prediction=prediction)
    sigmas = sigmas_for(schedule, TIMESTEPS, end)
    x = start_latent(sigmas[0])
    ours = run_ours(name, sd, conds, sigmas, x, prediction)
    expected = diffusers_uni_pc(guided_unet(sd, conds), x, TIMESTEPS, sigmas, VARIANTS[name], prediction)
    assert relative_error(ours, x) > 1e-2, "sampling should move the latent"
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("timesteps", [TIMESTEPS, [999, 759, 519, 279, 39], [999, 499, 39], [999, 39]],
                         ids=["7_steps", "5_steps", "3_steps", "2_steps"])
def test_matches_the_unipc_equations(sd, conds, name, timesteps):
    sigmas = sigmas_for(DiscreteSchedule(), timesteps, None)
    x = start_latent(sigmas[0], seed=11)
    ours = run_ours(name, sd, conds, sigmas, x)
    expected = reference_uni_pc(guided_unet(sd, conds), x, timesteps, sigmas, VARIANTS[name])
    assert relative_error(ours, x) > 1e-2
    assert relative_error(ours, expected) <= TOLERANCE


def test_bh1_and_bh2_are_different_samplers(sd, conds):
    sigmas = sigmas_for(DiscreteSchedule(), TIMESTEPS, None)
    x = start_latent(sigmas[0])
    bh1, bh2 = (run_ours(name, sd, conds, sigmas, x) for name in ("uni_pc", "uni_pc_bh2"))
    assert relative_error(bh1, bh2) > 100 * TOLERANCE  # far beyond the parity tolerance: the tests tell them apart


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_reports_once_per_step_and_ignores_the_seed(sd, conds, name):
    sigmas = sigmas_for(DiscreteSchedule(), TIMESTEPS, None)
    x = start_latent(sigmas[0])
    seen = []
    result = run_ours(name, sd, conds, sigmas, x, seed=1, callback=lambda i, xi, d: seen.append((i, xi, d)))
    assert [i for i, _, _ in seen] == list(range(len(TIMESTEPS)))
    denoiser = GuidedDenoiser(sd.unet, DiscreteSchedule(), *conds, cfg=CFG)
    with torch.no_grad():
        first_denoised = denoiser(x, sigmas[:1])
    assert torch.allclose(seen[0][1], x, rtol=1e-5, atol=1e-4)  # step 0 reports the starting x (in sigma space)
    assert relative_error(seen[0][2], first_denoised) < 1e-5
    assert torch.equal(seen[-1][1], result)  # the last report holds the result
    assert torch.equal(run_ours(name, sd, conds, sigmas, x, seed=2), result)  # UniPC draws no noise


def test_one_step_takes_no_step_as_comfyui(sd, conds):
    """ComfyUI's order is min(3, len(sigmas) - 2): 0 for a single step, which evaluates the model once and then
    only rescales x (into VP space at sigma_0, out of it at the 0.001 stand-in)."""
    sigmas = sigmas_for(DiscreteSchedule(), [999], None)
    x = start_latent(sigmas[0])
    seen = []
    result = run_ours("uni_pc", sd, conds, sigmas, x, callback=lambda i, xi, d: seen.append(i))
    stand_in_alpha = comfy_vp(0.001)[0]
    expected = x.double() / math.sqrt(1 + float(sigmas[0]) ** 2) / stand_in_alpha
    assert seen == [0]
    assert relative_error(result, expected) < 1e-6
