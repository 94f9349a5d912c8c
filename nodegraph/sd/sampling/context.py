"""What every sampler function receives, so the step rules stay small pure functions.

A sampler is `sampler(model, x, sigmas, ctx) -> x`:
- `model(x, sigma)` is a Denoiser: x [B, C, H, W] float32 at noise level sigma (a [B] tensor) -> the estimate of x0
  (CFG already applied). Sampling works in k-diffusion's space: x = x0 + sigma * noise, raw of any VAE scaling.
- `x` is the starting latent, already noised to sigmas[0]; `sigmas` is the decreasing list to step along (float32,
  usually ending in 0).
- `ctx` carries the seed for the sampler's own noise, the per-step callback and the model's schedule.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from .noise import NoiseSampler, brownian_noise, step_noise
from .schedule import DiscreteSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (step index i, x at the start of step i, the denoised estimate at step i) -> None; raising stops the sampler.
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class SamplerContext:
    schedule: DiscreteSchedule
    seed: int | None = None
    callback: StepCallback | None = None
    noise_sampler: NoiseSampler | None = None  # replaces the sampler's own noise (tests hand in a reference's)
    brownian_on_device: bool = False  # the `_gpu` SDE samplers keep their Brownian tree on the latent's device
    _opened: list = field(default_factory=list, repr=False)  # noise sources with a worker to stop at the end

    def step_noise(self, x: torch.Tensor) -> NoiseSampler:
        """The noise of ancestral steps (ancestral samplers, ddpm, lcm)."""
        return self.noise_sampler or step_noise(x, self.seed)

    def brownian_noise(self, x: torch.Tensor, sigmas: torch.Tensor, planned: Iterable[tuple] = ()) -> NoiseSampler:
        """The noise of SDE steps: a Brownian tree over the positive sigmas. `planned` lists the (sigma, sigma_next)
        queries the sampler will make, in order: they are answered ahead, while the model runs."""
        if self.noise_sampler is not None:
            return self.noise_sampler
        noise = brownian_noise(x, sigmas, self.seed, on_cpu=not self.brownian_on_device, planned=planned)
        self._opened.append(noise)
        return noise

    def close(self) -> None:
        """Stop what is still computing ahead for a run that has ended (or failed, or was interrupted)."""
        for noise in self._opened:
            noise.close()
        self._opened.clear()

    def report(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        """Called once per step, right after the step's first model evaluation (as k-diffusion's callback)."""
        if self.callback is not None:
            self.callback(i, x, denoised)


def batch_sigma(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """One sigma per batch item, as a Denoiser takes it."""
    return sigma * x.new_ones([x.shape[0]])


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's derivative dx/dsigma from a denoised estimate."""
    return (x - denoised) / sigma
