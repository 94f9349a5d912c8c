"""ComfyUI's `uni_pc` and `uni_pc_bh2` samplers: multistep UniPC (Zhao et al. 2023) on the data prediction.

UniPC pairs a multistep predictor (UniP) with a corrector (UniC) that reuses the model evaluation at the predicted
point, so a step costs one model call while the corrector lifts the order by one. The step rule is an exponential
integrator in lambda = log(alpha / sigma_vp), the half log-SNR, over earlier x0 estimates; B(h) is the free function
of the B(h) variants: h for bh1, e^h - 1 for bh2.

This is the one path ComfyUI takes (comfy/extra_samplers/uni_pc.py, sample_unipc), not the general library:
- time is sigma itself: alpha, the VP noise std and lambda are computed from sigma in float32 with ComfyUI's exact
  expressions (alpha^2 = 1 / (sigma^2 + 1), std = sqrt(1 - alpha^2)). They lose precision at small sigma, and the
  last step lands on 0.001 where the sigmas end in 0, so those expressions are part of the result and are kept;
- x is moved into the variance-preserving space (divided by sqrt(1 + sigma_0^2)) at the start, and the result is
  divided by alpha at the last sigma;
- order min(3, steps - 1), warmed up from 1, lowered again over the final steps (lower_order_final);
- the corrector runs on every step but the last, whose endpoint is never evaluated;
- the predictor of order 2 and the corrector of order 1 use the fixed coefficient 1/2 instead of solving for it.
"""

import math

import torch

from .context import Denoiser, SamplerContext
from .schedule import per_item

ZERO_SIGMA_STANDIN = 0.001  # UniPC's lambda is infinite at sigma 0: ComfyUI steps to this sigma instead


def _half_log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_half_log_alpha(sigma))


def _vp_std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1. - torch.exp(2. * _half_log_alpha(sigma)))


def _half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    log_alpha = _half_log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1. - torch.exp(2. * log_alpha))


def _x0_estimate(model: Denoiser, x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The model's x0 estimate for variance-preserving x, by ComfyUI's route: back to sigma space for the denoiser,
    its noise estimate, then x0 from the noise with the VP alpha and std (the same x0 up to rounding, which this
    keeps)."""
    s = per_item(sigma, x_vp.ndim)
    x = x_vp * ((s**2 + 1.0) ** 0.5)
    eps = (x - model(x, sigma)) / s
    return (x_vp - per_item(_vp_std(sigma), x_vp.ndim) * eps) / per_item(_alpha(sigma), x_vp.ndim)


def _b_h_coefficients(hh: torch.Tensor, order: int, variant: str, device: torch.device) -> torch.Tensor:
    """b_i = i! * hh * phi_{i+1}(hh) / B(hh) for i = 1..order, the right-hand side UniPC's coefficients solve for.

    The phi recurrence nearly cancels for small steps, so (as ComfyUI does) it runs in float64 on the CPU and only
    the result is rounded to float32."""
    hh64 = hh.detach().cpu().double()
    b_h64 = hh64 if variant == "bh1" else torch.expm1(hh64)
    h_phi = torch.expm1(hh64) / hh64 - 1  # hh * phi_2(hh)
    coefficients = []
    for i in range(1, order + 1):
        coefficients.append(h_phi * math.factorial(i) / b_h64)
        h_phi = h_phi / hh64 - 1 / math.factorial(i + 1)  # hh * phi_{i+2}(hh)
    return torch.stack(coefficients).to(device, hh.dtype)


def _uni_pc_step(model: Denoiser, x: torch.Tensor, x0s: list[torch.Tensor], sigmas_seen: list[torch.Tensor],
                 sigma: torch.Tensor, order: int, variant: str, correct: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniPC step of `order` from the last sigma seen (holding x, VP) to `sigma` [B], using the last `order` x0
    estimates. Returns the new x and, when corrected, the x0 estimate at the predicted point (the next step's
    history: the corrector does not re-evaluate its own result)."""
    ndim = x.ndim
    sigma_prev, x0_prev = sigmas_seen[-1], x0s[-1]
    lambda_prev = _half_log_snr(sigma_prev)
    h = _half_log_snr(sigma) - lambda_prev
    std_ratio = _vp_std(sigma) / _vp_std(sigma_prev)
    alpha = torch.exp(_half_log_alpha(sigma))

    # Earlier estimates enter as divided differences against the newest, at their relative distances r_k in lambda.
    ratios, differences = [], []
    for k in range(1, order):
        r = ((_half_log_snr(sigmas_seen[-(k + 1)]) - lambda_prev) / h)[0]
        ratios.append(r)
        differences.append((x0s[-(k + 1)] - x0_prev) / r)
    ratios = torch.stack(ratios + [torch.ones((), dtype=h.dtype, device=h.device)]).to(x.device)

    hh = -h[0]  # data prediction integrates in -lambda
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rhs = _b_h_coefficients(hh, order, variant, x.device)
    vandermonde = torch.stack([torch.pow(ratios, i - 1) for i in range(1, order + 1)])

    # The first-order (DDIM-like) exponential-integrator step; both predictor and corrector add to it.
    x_first = per_item(std_ratio, ndim) * x - per_item(alpha * h_phi_1, ndim) * x0_prev
    weight = per_item(alpha * b_h, ndim)
    stacked = torch.stack(differences, dim=1) if differences else None  # [B, order - 1, C, H, W]
    x_next = x_first
    if stacked is not None:
        rhos = (torch.tensor([0.5], device=rhs.device) if order == 2
                else torch.linalg.solve(vandermonde[:-1, :-1], rhs[:-1]))
        x_next = x_first - weight * torch.tensordot(stacked, rhos, dims=([1], [0]))
    if not correct:
        return x_next, None

    x0_next = _x0_estimate(model, x_next, sigma)
    rhos = torch.tensor([0.5], device=rhs.device) if order == 1 else torch.linalg.solve(vandermonde, rhs)
    correction = rhos[-1] * (x0_next - x0_prev)
    if stacked is not None:
        correction = torch.tensordot(stacked, rhos[:-1], dims=([1], [0])) + correction
    return x_first - weight * correction, x0_next


@torch.no_grad()
def _sample_uni_pc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext,
                   variant: str) -> torch.Tensor:
    stops = sigmas.clone()  # (ComfyUI writes the stand-in into the caller's sigmas; a copy gives the same steps)
    if stops[-1] == 0:
        stops[-1] = ZERO_SIGMA_STANDIN
    steps = len(stops) - 1
    order = min(3, len(stops) - 2)  # 0 for a single step: then ComfyUI evaluates once and takes no step at all
    x = x / torch.sqrt(1.0 + stops[0] ** 2.0)
    batch = x.shape[0]

    x0s: list[torch.Tensor] = []
    sigmas_seen: list[torch.Tensor] = []
    at = stops[0]  # the sigma x is at, for reporting x in sigma space
    for i in range(steps):
        if i == 0:
            sigma = stops[0].expand(batch)
            x0s, sigmas_seen = [_x0_estimate(model, x, sigma)], [sigma]
        else:
            # Step i reaches stops[i]; the last one also takes the final, uncorrected step to stops[steps].
            for target in range(i, steps + 1 if i == steps - 1 else i + 1):
                sigma = stops[target].expand(batch)
                step_order = i if i < order else min(order, steps + 1 - target)  # warm-up, then lower_order_final
                x, x0 = _uni_pc_step(model, x, x0s, sigmas_seen, sigma, step_order, variant, correct=target < steps)
                sigmas_seen = (sigmas_seen + [sigma])[-3:]
                if x0 is not None:
                    x0s = (x0s + [x0])[-3:]
                at = stops[target]
        ctx.report(i, x / _alpha(at), x0s[-1])
    return x / _alpha(stops[-1])


def uni_pc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """ComfyUI's `uni_pc`: UniPC with B(h) = h (bh1)."""
    return _sample_uni_pc(model, x, sigmas, ctx, "bh1")


def uni_pc_bh2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """ComfyUI's `uni_pc_bh2`: UniPC with B(h) = e^h - 1 (bh2)."""
    return _sample_uni_pc(model, x, sigmas, ctx, "bh2")


UNI_PC_SAMPLERS = {"uni_pc": uni_pc, "uni_pc_bh2": uni_pc_bh2}
