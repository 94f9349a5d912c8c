"""Schedulers: (model schedule, steps) -> the decreasing sigmas a sampler steps along, ending in 0.

Each is ComfyUI's definition (comfy/samplers.py, comfy/k_diffusion/sampling.py), computed in float32 as there, so the
same scheduler and step count give ComfyUI's sigmas exactly; `steps` sigmas plus the final 0.
"""

import math
from collections.abc import Callable

import torch

from .schedule import DiscreteSchedule

Scheduler = Callable[[DiscreteSchedule, int], torch.Tensor]


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho), so steps crowd towards low noise where detail forms."""
    ramp = torch.linspace(0, 1, steps)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((high + ramp * (low - high)) ** rho)


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp())


def _near_zero(value) -> bool:
    return math.isclose(float(value), 0.0, abs_tol=1e-5)


def normal(schedule: DiscreteSchedule, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced from the first to the last training timestep, through the model's own sigma table."""
    start, end = schedule.timestep(schedule.sigma_max), schedule.timestep(schedule.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(float(start), float(end), steps + 1)[:-1]
    else:
        if _near_zero(schedule.sigma(end)):  # a model whose last sigma is 0 ends there instead
            steps, append_zero = steps + 1, False
        timesteps = torch.linspace(float(start), float(end), steps)
    sigmas = torch.tensor([float(schedule.sigma(t)) for t in timesteps], dtype=torch.float32)
    return _with_zero(sigmas) if append_zero else sigmas


def sgm_uniform(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Like normal, but over steps + 1 evenly spaced timesteps without the last (Stability's "trailing" spacing)."""
    return normal(schedule, steps, sgm=True)


def simple(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Every (1000 / steps)-th entry of the sigma table, from the top."""
    stride = len(schedule.sigmas) / steps
    return _with_zero(torch.tensor([float(schedule.sigmas[-(1 + int(i * stride))]) for i in range(steps)]))


def ddim_uniform(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """DDIM's uniform timesteps 1, 1 + 1000 // steps, ...: the top is below sigma_max (901 for 10 steps)."""
    table = schedule.sigmas
    sigmas = []
    if _near_zero(table[1]):
        steps += 1
    else:
        sigmas = [0.0]
    stride = max(len(table) // steps, 1)
    sigmas += [float(table[t]) for t in range(1, len(table), stride)]
    return torch.tensor(sigmas[::-1], dtype=torch.float32)


def beta(schedule: DiscreteSchedule, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Timesteps at quantiles of a Beta(0.6, 0.6) distribution (Lee et al. 2024): more steps at both ends."""
    last = len(schedule.sigmas) - 1
    sigmas, previous = [], None
    for i in range(steps):
        t = round_half_even(beta_quantile(1.0 - i / steps, alpha, beta_) * last)
        if t != previous:  # quantiles that round to one timestep give it once
            sigmas.append(float(schedule.sigmas[t]))
        previous = t
    return _with_zero(torch.tensor(sigmas, dtype=torch.float32))


def linear_quadratic(schedule: DiscreteSchedule, steps: int, threshold_noise: float = 0.025,
                     linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's schedule: linear in the first half of the steps, then quadratic, as fractions of sigma_max."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / quadratic_steps**2
        const = quadratic_coef * linear_steps**2
        quadratic = [quadratic_coef * i**2 + linear_coef * i + const for i in range(linear_steps, steps)]
        fractions = [1.0 - f for f in linear + quadratic + [1.0]]
    return torch.tensor(fractions, dtype=torch.float32) * schedule.sigma_max


def kl_optimal(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) (the KL-optimal schedule of A1111 PR 15608)."""
    # One step is just sigma_max (ComfyUI divides by steps - 1 = 0 there and samples from nan).
    fraction = torch.arange(steps, dtype=torch.float32).div_(max(steps - 1, 1))
    sigmas = fraction.new_zeros(steps + 1)
    low, high = math.atan(float(schedule.sigma_min)), math.atan(float(schedule.sigma_max))
    sigmas[:-1] = (fraction * low + (1 - fraction) * high).tan_()
    return sigmas


SCHEDULERS: dict[str, Scheduler] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": lambda schedule, steps: karras_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max)),
    "exponential": lambda schedule, steps: exponential_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max)),
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}
SCHEDULER_NAMES = tuple(SCHEDULERS)  # ComfyUI's order: clients and UI workflows list them so


def scheduler_sigmas(schedule: DiscreteSchedule, scheduler: str, steps: int) -> torch.Tensor:
    """The sigmas of a scheduler by name, for `steps` steps (float32, on the CPU)."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {', '.join(SCHEDULER_NAMES)}")
    if steps < 1:
        raise ValueError(f"a schedule needs at least 1 step, got {steps}")
    return SCHEDULERS[scheduler](schedule, steps)


def sd_turbo_sigmas(schedule: DiscreteSchedule, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SD-Turbo's few-step schedule: timesteps 999, 899, ..., 99, starting 10 * (1 - denoise) of them later."""
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start : start + steps]
    return _with_zero(schedule.sigma(timesteps))


# --- the Beta distribution's quantile function, for the beta scheduler (no scipy at run time) --------------------


def round_half_even(value: float) -> int:
    """numpy.rint's rounding: halves go to the even neighbour."""
    return int(round(value))


def _incomplete_beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny, fraction = 1e-300, 1.0
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return fraction


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b): the Beta(a, b) distribution's CDF."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(1.0 - x, b, a) / b


def beta_quantile(p: float, a: float, b: float) -> float:
    """The Beta(a, b) quantile (inverse CDF) by bisection to float64 resolution: the CDF is monotone, so this is
    exact to the last bits where Newton steps can stall near the ends."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    if a == b and p == 0.5:  # the median of a symmetric Beta: exactly 0.5, which the beta scheduler rounds half-even
        return 0.5
    low, high = 0.0, 1.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if beta_cdf(middle, a, b) < p:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)
