"""The denoiser a sampler calls: our UNet behind the model schedule, with classifier-free guidance as ComfyUI does it.

ComfyUI guides on the denoised estimates, not on the noise predictions: uncond + (cond - uncond) * cfg of the x0
estimates (samplers.py cfg_function). At cfg == 1 the negative prompt is not evaluated at all. The UNet is called
at the nearest training timestep of each sigma, on x / sqrt(sigma^2 + 1).
"""

import math
from collections.abc import Callable

import torch

from .schedule import DiscreteSchedule


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Fit a batch of conditionings (or masks) to `batch` items: cut when longer, repeated in order when shorter."""
    if tensor.shape[0] > batch:
        return tensor[:batch]
    if tensor.shape[0] < batch:
        return tensor.repeat((math.ceil(batch / tensor.shape[0]),) + (1,) * (tensor.ndim - 1))[:batch]
    return tensor


def common_token_length(*conds: torch.Tensor) -> list[torch.Tensor]:
    """Conditionings of different lengths (77 vs 154 tokens) repeated along the token axis to their least common
    multiple, so they batch together in one UNet call: repeating a prompt's chunks leaves cross-attention unchanged."""
    length = math.lcm(*(c.shape[1] for c in conds))
    return [c.repeat(1, length // c.shape[1], 1) if c.shape[1] != length else c for c in conds]


class GuidedDenoiser:
    """denoiser(x, sigma) -> x0 estimate, float32, for a batch of latents x [B, C, H, W] at sigma [B].

    `before_each_call` runs before every model evaluation (samplers with two evaluations per step call it twice):
    the place to stop a run that was asked to stop.
    """

    def __init__(self, unet: Callable, schedule: DiscreteSchedule, positive: torch.Tensor, negative: torch.Tensor | None,
                 cfg: float, before_each_call: Callable[[], None] | None = None):
        self.unet, self.schedule, self.cfg = unet, schedule, float(cfg)
        self.skip_negative = negative is None or math.isclose(self.cfg, 1.0)
        self.positive, self.negative = positive, negative
        if not self.skip_negative and positive.shape[1] != negative.shape[1]:
            self.positive, self.negative = common_token_length(positive, negative)
        self.before_each_call = before_each_call
        self._context: dict[tuple, torch.Tensor] = {}  # by (batch, device): built once, not at every call

    def context(self, batch: int, device: torch.device) -> torch.Tensor:
        """The UNet's context for a batch of latents: the positive prompt, then the negative unless skipped."""
        key = (batch, device)
        if key not in self._context:
            parts = [self.positive] if self.skip_negative else [self.positive, self.negative]
            self._context[key] = torch.cat([repeat_to_batch(part, batch) for part in parts]).to(device)
        return self._context[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.before_each_call is not None:
            self.before_each_call()
        model_input = self.schedule.model_input(sigma, x)
        timestep = self.schedule.timestep(sigma)
        context = self.context(x.shape[0], x.device)
        if self.skip_negative:
            return self.schedule.denoised(sigma, self.unet(model_input, timestep, context).float(), x)
        output = self.unet(torch.cat([model_input, model_input]), torch.cat([timestep, timestep]), context).float()
        cond, uncond = (self.schedule.denoised(sigma, part, x) for part in output.chunk(2))
        return uncond + (cond - uncond) * self.cfg
