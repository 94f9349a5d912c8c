"""ComfyUI's samplers of the k-diffusion family (comfy/k_diffusion/sampling.py), for eps and v models.

They all integrate the same probability-flow ODE dx/dsigma = (x - denoised) / sigma from sigmas[0] down to the last
sigma, and differ in the step rule: Euler, Heun, DPM-Solver-2, linear multistep, DPM-Solver++ (single or multistep).
The ancestral ones step down below the next sigma and add fresh noise back up to it; the SDE ones add Brownian noise.
Every rule follows ComfyUI's arithmetic, default settings (eta 1, s_noise 1, no churn) and order of operations, so
a run gives ComfyUI's latent up to float rounding. ctx.report(i, x, denoised) is called where ComfyUI calls its
per-step callback.
"""

from collections.abc import Sequence

import torch

from .context import Denoiser, SamplerContext, batch_sigma, to_d

Tensor = torch.Tensor


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up) of an ancestral step with eta 1: a deterministic step to sigma_down, then fresh noise of
    std sigma_up brings x back to sigma_to, with the noise of a DDPM posterior step."""
    sigma_up = min(sigma_to, (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


# DPM-Solver works in lambda = log(alpha / sigma), the half log-SNR. For the discrete (eps and v) schedules alpha is 1
# in k-diffusion's parametrisation, so lambda = -log(sigma); ComfyUI's flow-model branch is not needed here.
def half_log_snr(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def sigma_at(lambda_: Tensor) -> Tensor:
    return lambda_.neg().exp()


# --- Euler, Heun and DPM-Solver-2 steps, and their ancestral variants ---------------------------------------------


@torch.no_grad()
def euler(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """Euler steps along the ODE: one evaluation per step, the plain first-order baseline."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]))
        d = to_d(x, sigmas[i], denoised)
        ctx.report(i, x, denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def euler_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """Euler steps with fresh noise added at each step: varied, detailed results that keep changing with the steps."""
    noise = ctx.step_noise(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        ctx.report(i, x, denoised)
        if sigma_down == 0:
            x = denoised  # the step to sigma 0 is the estimate itself; ComfyUI skips the arithmetic
        else:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i]) + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def heun(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """Heun's second-order steps (Karras et al. 2022): two evaluations per step, more accurate than Euler."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma))
        d = to_d(x, sigma, denoised)
        ctx.report(i, x, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt  # the corrector would divide by sigma 0: the last step is Euler's
        else:
            x_euler = x + d * dt
            d_next = to_d(x_euler, sigma_next, model(x_euler, batch_sigma(x, sigma_next)))
            x = x + (d + d_next) / 2 * dt
    return x


def log_midpoint(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """The geometric mean of two sigmas, where DPM-Solver-2 takes its second evaluation."""
    return sigma.log().lerp(sigma_next.log(), 0.5).exp()


@torch.no_grad()
def dpm_2(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """DPM-Solver-2 steps: the slope at the log-midpoint carries the whole step; two evaluations, second order."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma))
        d = to_d(x, sigma, denoised)
        ctx.report(i, x, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)  # no midpoint between sigma and 0 in log space
        else:
            sigma_mid = log_midpoint(sigma, sigma_next)
            x_mid = x + d * (sigma_mid - sigma)
            d_mid = to_d(x_mid, sigma_mid, model(x_mid, batch_sigma(x, sigma_mid)))
            x = x + d_mid * (sigma_next - sigma)
    return x


@torch.no_grad()
def dpm_2_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """DPM-Solver-2 steps with fresh noise added at each step: the ancestral flavour of dpm_2."""
    noise = ctx.step_noise(x)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, batch_sigma(x, sigma))
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1])
        ctx.report(i, x, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = log_midpoint(sigma, sigma_down)
            x_mid = x + d * (sigma_mid - sigma)
            d_mid = to_d(x_mid, sigma_mid, model(x_mid, batch_sigma(x, sigma_mid)))
            x = x + d_mid * (sigma_down - sigma)
            x = x + noise(sigma, sigmas[i + 1]) * sigma_up
    return x


# --- linear multistep ----------------------------------------------------------------------------------------------


def lms_coefficient(sigmas: Sequence[float], i: int, j: int, order: int) -> float:
    """The weight of the slope from step i - j in the step from sigmas[i] to sigmas[i + 1]: the integral over that
    interval of the Lagrange basis polynomial that is 1 at sigmas[i - j] and 0 at the other order - 1 past sigmas.

    ComfyUI integrates numerically (scipy's quad); the integrand is a polynomial of degree order - 1, so this expands
    it in float64 and integrates exactly. The variable is shifted to u = sigma - sigmas[i], so the integral is the
    antiderivative at the step size alone and nothing cancels between the two ends.
    """
    if order - 1 > i:
        raise ValueError(f"order {order} needs {order} past steps, step {i} has {i + 1}")
    start = float(sigmas[i])
    poly = [1.0]  # ascending powers of u
    for k in range(order):
        if k == j:
            continue
        root, scale = float(sigmas[i - k]) - start, float(sigmas[i - j]) - float(sigmas[i - k])
        poly = [(low - root * high) / scale for low, high in zip([0.0] + poly, poly + [0.0])]
    step = float(sigmas[i + 1]) - start
    return sum(c * step ** (n + 1) / (n + 1) for n, c in enumerate(poly))


@torch.no_grad()
def lms(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext, order: int = 4) -> Tensor:
    """Linear multistep (order 4): reuses the last slopes, one evaluation per step; smooth results, can overshoot."""
    nodes = sigmas.detach().cpu().tolist()
    slopes: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]))
        slopes.append(to_d(x, sigmas[i], denoised))
        if len(slopes) > order:
            slopes.pop(0)
        ctx.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised  # ComfyUI ends on the estimate rather than a multistep to sigma 0
        else:
            current = min(i + 1, order)
            coefficients = [lms_coefficient(nodes, i, j, current) for j in range(current)]
            x = x + sum(c * d for c, d in zip(coefficients, reversed(slopes)))
    return x


# --- DPM-Solver++ --------------------------------------------------------------------------------------------------


@torch.no_grad()
def dpmpp_2s_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """DPM-Solver++(2S) single-step second-order steps with fresh noise added at each step."""
    noise = ctx.step_noise(x)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, batch_sigma(x, sigma))
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1])
        ctx.report(i, x, denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = half_log_snr(sigma), half_log_snr(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_mid = (sigma_at(s) / sigma_at(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_mid = model(x_mid, batch_sigma(x, sigma_at(s)))
            x = (sigma_at(t_next) / sigma_at(t)) * x - (-h).expm1() * denoised_mid
        if sigmas[i + 1] > 0:
            x = x + noise(sigma, sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def dpmpp_2m(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """DPM-Solver++(2M) multistep: second order from one evaluation per step; sharp and fast to converge."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]))
        ctx.report(i, x, denoised)
        # At sigma 0 t_next is inf: sigma_at(t_next) is 0 and expm1(-inf) is -1, so the step lands on the estimate.
        t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_at(t_next) / sigma_at(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - half_log_snr(sigmas[i - 1])) / h
            corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_at(t_next) / sigma_at(t)) * x - (-h).expm1() * corrected
        old_denoised = denoised
    return x


def steps_to_noise(sigmas: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The (sigma, sigma_next) of the steps that add noise: all but a last step to 0."""
    return [(sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 1) if sigmas[i + 1] > 0]


def sde_midpoint(sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
    """dpmpp_sde's intermediate point: halfway in lambda between the two sigmas (r = 1/2), as (lambda, sigma)."""
    lambda_s = half_log_snr(sigma)
    lambda_mid = lambda_s + 0.5 * (half_log_snr(sigma_next) - lambda_s)
    return lambda_mid, sigma_at(lambda_mid)


@torch.no_grad()
def dpmpp_sde(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """DPM-Solver++ stochastic single-step (two evaluations per step, Brownian noise): detailed, slower."""
    if len(sigmas) <= 1:
        return x
    queries = [pair for sigma, sigma_next in steps_to_noise(sigmas)
               for pair in ((sigma, sde_midpoint(sigma, sigma_next)[1]), (sigma, sigma_next))]
    noise = ctx.brownian_noise(x, sigmas, planned=queries)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma))
        ctx.report(i, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma), half_log_snr(sigma_next)
        lambda_mid, sigma_mid = sde_midpoint(sigma, sigma_next)
        # alpha is 1 for these schedules; ComfyUI still multiplies by it as computed, so its rounding is kept here
        alpha_s, alpha_mid, alpha_t = sigma * lambda_s.exp(), sigma_mid * lambda_mid.exp(), sigma_next * lambda_t.exp()

        # first half: an ancestral DPM-Solver++ step to the log-midpoint, for a second estimate there
        sigma_down, sigma_up = ancestral_step(sigma_at(lambda_s), sigma_at(lambda_mid))
        h_down = half_log_snr(sigma_down) - lambda_s
        x_mid = (alpha_mid / alpha_s) * (-h_down).exp() * x - alpha_mid * (-h_down).expm1() * denoised
        x_mid = x_mid + alpha_mid * noise(sigma, sigma_mid) * sigma_up
        denoised_mid = model(x_mid, batch_sigma(x, sigma_mid))

        # whole step from x again, on the midpoint's estimate alone: with the midpoint at r = 1/2 the first
        # estimate's weight 1 - 1/(2r) is 0
        sigma_down, sigma_up = ancestral_step(sigma_at(lambda_s), sigma_at(lambda_t))
        h_down = half_log_snr(sigma_down) - lambda_s
        x = (alpha_t / alpha_s) * (-h_down).exp() * x - alpha_t * (-h_down).expm1() * denoised_mid
        x = x + alpha_t * noise(sigma, sigma_next) * sigma_up
    return x


@torch.no_grad()
def dpmpp_2m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """DPM-Solver++(2M) SDE, midpoint variant: second-order multistep with Brownian noise, one evaluation per step."""
    if len(sigmas) <= 1:
        return x
    noise = ctx.brownian_noise(x, sigmas, planned=steps_to_noise(sigmas))
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma))
        ctx.report(i, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigma), half_log_snr(sigma_next)
            h = lambda_t - lambda_s
            h_eta = h * 2  # h * (eta + 1): with eta 1 the step removes as much noise again as it adds back
            alpha_t = sigma_next * lambda_t.exp()
            x = sigma_next / sigma * (-h).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = x + noise(sigma, sigma_next) * sigma_next * (-2 * h).expm1().neg().sqrt()
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def dpmpp_3m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, ctx: SamplerContext) -> Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep with Brownian noise, one evaluation per step; wants more steps."""
    if len(sigmas) <= 1:
        return x
    noise = ctx.brownian_noise(x, sigmas, planned=steps_to_noise(sigmas))
    denoised_1, denoised_2 = None, None  # the estimates of the last two steps
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma))
        ctx.report(i, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigma), half_log_snr(sigma_next)
            h = lambda_t - lambda_s
            h_eta = h * 2  # h * (eta + 1), eta 1
            alpha_t = sigma_next * lambda_t.exp()
            x = sigma_next / sigma * (-h).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h_2 is not None:  # two past estimates: first and second divided differences
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:  # one past estimate: the 2M correction
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            x = x + noise(sigma, sigma_next) * sigma_next * (-2 * h).expm1().neg().sqrt()
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


K_SAMPLERS = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": lms,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
}

