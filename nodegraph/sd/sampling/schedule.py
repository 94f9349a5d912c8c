"""The model's noise schedule: the sigmas an SD model was trained with, and how a sampler talks to the model.

k-diffusion's view (Karras et al. 2022), which every ComfyUI sampler uses: a noisy latent is x = x0 + sigma * noise,
the sampler works in sigma, and the model is asked for its estimate of x0 ("denoised"). The schedule converts: the
UNet wants x / sqrt(sigma^2 + 1) and an integer training timestep, and predicts noise (eps) or velocity (v).
"""

from dataclasses import dataclass, field
from typing import Literal

import torch

TRAIN_STEPS = 1000
Prediction = Literal["eps", "v"]


def per_item(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """A sigma (one number, or one per batch item) shaped to broadcast over a latent of `ndim` dimensions."""
    return sigma.reshape(()) if sigma.numel() == 1 else sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


@dataclass(frozen=True)
class DiscreteSchedule:
    """SD's discrete schedule: 1000 training timesteps with betas linear in sqrt space.

    The table is computed in float64 and stored in float32, as ComfyUI does, so sigma_min, sigma_max and every
    scheduler's sigmas come out bit for bit the same (the checkpoint's own schedule buffers are not used).
    """

    beta_start: float = 0.00085
    beta_end: float = 0.012
    steps: int = TRAIN_STEPS
    prediction: Prediction = "eps"
    sigmas: torch.Tensor = field(init=False, repr=False, compare=False)
    log_sigmas: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.steps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        object.__setattr__(self, "sigmas", sigmas.float())
        object.__setattr__(self, "log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha-bar per training timestep (float64), derived from the float32 sigma table as ComfyUI's samplers do."""
        return 1.0 / (self.sigmas.double() ** 2 + 1.0)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep whose log sigma is nearest: what the UNet is called at (an integer, as float)."""
        distances = sigma.log().to(self.log_sigmas.device).reshape(1, -1) - self.log_sigmas[:, None]
        return distances.abs().argmin(dim=0).reshape(sigma.shape).to(sigma.device, torch.float32)

    def sigma(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """sigma at a (possibly fractional) timestep: log sigma interpolated between the table's entries."""
        timestep = torch.as_tensor(timestep)
        t = timestep.float().clamp(0, self.steps - 1)
        low, high, weight = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        """sigma at a fraction of the way through sampling (0 = the start, pure noise; 1 = the end)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.steps - 1))))

    # --- between the sampler's x and the model ------------------------------------------------------------------

    def model_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The UNet's input: x scaled to unit variance (x / sqrt(sigma^2 + 1))."""
        return x / (per_item(sigma, x.ndim) ** 2 + 1.0) ** 0.5

    def denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The estimate of x0 from the model's prediction (noise for eps models, velocity for v models)."""
        sigma = per_item(sigma, x.ndim)
        if self.prediction == "v":
            return x / (sigma**2 + 1.0) - model_output * sigma / (sigma**2 + 1.0) ** 0.5
        return x - model_output * sigma

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool) -> torch.Tensor:
        """The sampler's starting x: latent plus noise at sigma. At the very top of the schedule ComfyUI scales the
        noise by sqrt(1 + sigma^2) instead of sigma (the variance of x0 + noise there)."""
        sigma = per_item(sigma, noise.ndim)
        scale = torch.sqrt(1.0 + sigma**2) if max_denoise else sigma
        return noise * scale + latent

    def is_max_denoise(self, first_sigma: torch.Tensor | float) -> bool:
        """Whether sampling starts at (or above) sigma_max: then the start is treated as pure noise."""
        sigma, top = float(first_sigma), float(self.sigma_max)
        return abs(sigma - top) <= 1e-5 * max(abs(sigma), abs(top)) or sigma > top
