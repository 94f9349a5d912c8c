"""The model's noise schedule: the sigmas an SD model was trained with, and how a sampler talks to the model.

k-diffusion's view (Karras et al. 2022), which every ComfyUI sampler uses: a noisy latent is x = x0 + sigma * noise,
the sampler works in sigma, and the model is asked for its estimate of x0 ("denoised"). The schedule converts: the
UNet wants x / sqrt(sigma^2 + 1) and an integer training timestep, and predicts noise (eps) or velocity (v).

The other prediction types are ComfyUI's (comfy/model_sampling.py, ModelSamplingDiscrete's choices):
- x0          the model predicts x0 itself.
- img_to_img  predicts x0 from the unscaled x (ComfyUI's IMG_TO_IMG: no input scaling).
- lcm         a latent consistency model: an eps prediction through LCM's boundary condition
              (c_skip * x + c_out * x0 at the timestep scaled by 10, sigma_data 0.5), on the distilled table of 50 of
              the 1000 timesteps (ModelSamplingDiscreteDistilled).
`zsnr` rescales the table to zero terminal SNR (Lin et al. 2023), as ComfyUI does.
"""

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import torch

TRAIN_STEPS = 1000
Prediction = Literal["eps", "v", "x0", "img_to_img", "lcm"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
LCM_ORIGINAL_STEPS = 50  # the timesteps LCM was distilled on (ModelSamplingDiscreteDistilled.original_timesteps)
LCM_SIGMA_DATA, LCM_TIMESTEP_SCALING = 0.5, 10.0
# Zero terminal SNR makes the last alpha-bar 0 and its sigma infinite; ComfyUI sets that alpha-bar to this tiny
# number instead (sigma_max ~ 4518.8), so inputs, noise and every scheduler stay finite. diffusers uses 2^-24.
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """A sigma table (float64) rescaled so its last timestep has zero SNR: sqrt(alpha-bar) shifted to end at 0 and
    scaled to start where it did (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"),
    as ComfyUI's rescale_zero_terminal_snr_sigmas computes it, with its finite stand-in for the last alpha-bar."""
    root = (1.0 / (sigmas * sigmas + 1.0)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alpha_bar[-1] = ZSNR_LAST_ALPHA_BAR
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def per_item(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """A sigma (one number, or one per batch item) shaped to broadcast over a latent of `ndim` dimensions."""
    return sigma.reshape(()) if sigma.numel() == 1 else sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


@dataclass(frozen=True)
class DiscreteSchedule:
    """SD's discrete schedule: 1000 training timesteps with betas linear in sqrt space.

    The table is computed in float64 and stored in float32, as ComfyUI does, so sigma_min, sigma_max and every
    scheduler's sigmas come out bit for bit the same (the checkpoint's own schedule buffers are not used).
    With `original_steps` (LCM's 50) the table keeps only the timesteps k * skip + skip - 1, skip = steps //
    original_steps (19, 39, ..., 999): schedulers then space their steps over those, and a sigma maps to one of them.
    """

    beta_start: float = 0.00085
    beta_end: float = 0.012
    steps: int = TRAIN_STEPS
    prediction: Prediction = "eps"
    zsnr: bool = False
    original_steps: int | None = None
    sigmas: torch.Tensor = field(init=False, repr=False, compare=False)
    log_sigmas: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; expected one of {', '.join(PREDICTIONS)}")
        if self.original_steps is not None and not 1 <= self.original_steps <= self.steps:
            raise ValueError(f"original_steps must be 1..{self.steps}, got {self.original_steps}")
        betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.steps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if self.zsnr:
            sigmas = rescale_zero_terminal_snr(sigmas)
        log_sigmas = sigmas.log().float()
        sigmas = sigmas.float()
        if self.original_steps is not None:
            # every skip-th timestep counted down from the top; ComfyUI picks them from the float32 table and takes
            # the log again in float32 (its rounding, kept)
            sigmas = sigmas[self.steps - 1 - self.skip * torch.arange(self.original_steps - 1, -1, -1)]
            log_sigmas = sigmas.log()
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "log_sigmas", log_sigmas)

    @property
    def skip(self) -> int:
        """Training timesteps per table entry: 1, or 20 for LCM's distilled table."""
        return 1 if self.original_steps is None else self.steps // self.original_steps

    def with_prediction(self, prediction: Prediction, zsnr: bool = False) -> "DiscreteSchedule":
        """This schedule's betas with another prediction type and zsnr setting: what ComfyUI's ModelSamplingDiscrete
        node builds. lcm comes with its distilled table of LCM_ORIGINAL_STEPS timesteps."""
        original_steps = LCM_ORIGINAL_STEPS if prediction == "lcm" else None
        return replace(self, prediction=prediction, zsnr=zsnr, original_steps=original_steps)

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
        index = distances.abs().argmin(dim=0).reshape(sigma.shape)
        if self.original_steps is not None:
            index = index * self.skip + (self.skip - 1)
        return index.to(sigma.device, torch.float32)

    def sigma(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """sigma at a (possibly fractional) timestep: log sigma interpolated between the table's entries."""
        timestep = torch.as_tensor(timestep)
        t = timestep.float()
        if self.original_steps is not None:
            t = (t - (self.skip - 1)) / self.skip
        t = t.clamp(0, len(self.sigmas) - 1)
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
        """The UNet's input: x scaled to unit variance (x / sqrt(sigma^2 + 1)); img_to_img models take x as it is."""
        if self.prediction == "img_to_img":
            return x
        return x / (per_item(sigma, x.ndim) ** 2 + 1.0) ** 0.5

    def denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The estimate of x0 from the model's prediction (noise for eps and lcm models, velocity for v models, x0
        itself for x0 and img_to_img models); `x` is the sampler's (unscaled) x."""
        if self.prediction in ("x0", "img_to_img"):
            return model_output
        per = per_item(sigma, x.ndim)
        if self.prediction == "v":
            return x / (per**2 + 1.0) - model_output * per / (per**2 + 1.0) ** 0.5
        x0 = x - model_output * per
        if self.prediction == "lcm":
            # LCM's boundary condition: c_skip -> 1, c_out -> 0 as the timestep goes to 0, so f(x, 0) = x
            scaled = per_item(self.timestep(sigma), x.ndim) * LCM_TIMESTEP_SCALING
            c_skip = LCM_SIGMA_DATA**2 / (scaled**2 + LCM_SIGMA_DATA**2)
            c_out = scaled / (scaled**2 + LCM_SIGMA_DATA**2) ** 0.5
            return c_out * x0 + c_skip * x
        return x0

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
