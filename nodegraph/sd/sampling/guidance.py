"""The denoiser a sampler calls: our UNet behind the model schedule, with classifier-free guidance as ComfyUI does it.

ComfyUI guides on the denoised estimates, not on the noise predictions: uncond + (cond - uncond) * cfg of the x0
estimates (samplers.py cfg_function). At cfg == 1 the negative prompt is not evaluated at all. The UNet is called
at the nearest training timestep of each sigma, on x / sqrt(sigma^2 + 1).

Positive and negative are CONDITIONING (a tuple of Cond; a plain context tensor is one Cond over the whole latent).
Each side's estimate is the weighted average of its conds' estimates, each over its area or mask (regions.py). The
common case, one cond per side over the whole latent, takes a direct path: one UNet call on [positive, negative].

Models whose family has an ADM (SDXL base and refiner: `adm` "sdxl"/"refiner") also take y, one vector per batch
item built from its cond's pooled output and size conditioning (adm.cond_adm); y batches along with the contexts.
"""

import math
from collections.abc import Callable

import torch

from ..adm import cond_adm
from ..conditioning import Conditioning, as_conditioning
from .regions import RegionPlan, repeat_to_batch
from .schedule import DiscreteSchedule

# (latent crops [k*B, C, h, w], contexts [k*B, T, C], k) -> the estimates for those crops, float32; for a plan
# with an ADM also y=[k*B, adm width] (as a keyword, so evaluators of models without one need not take it)
Evaluate = Callable[..., torch.Tensor]

__all__ = ["GuidedDenoiser", "combine_regions", "common_token_length", "is_plain", "repeat_to_batch"]


def common_token_length(*conds: torch.Tensor) -> list[torch.Tensor]:
    """Conditionings of different lengths (77 vs 154 tokens) repeated along the token axis to their least common
    multiple, so they batch together in one UNet call: repeating a prompt's chunks leaves cross-attention unchanged."""
    length = math.lcm(*(c.shape[1] for c in conds))
    return [c.repeat(1, length // c.shape[1], 1) if c.shape[1] != length else c for c in conds]


def is_plain(conditioning: Conditioning | None) -> bool:
    """One cond over the whole latent at strength 1 (or nothing): its estimate is the model's, unweighted."""
    return conditioning is None or (len(conditioning) == 1 and conditioning[0].is_everywhere
                                    and conditioning[0].strength == 1.0)


def combine_regions(plan: RegionPlan, x: torch.Tensor, evaluate: Evaluate) -> list[torch.Tensor]:
    """Each list's estimate for x: every region evaluated on its crop (regions that fit batched into one call),
    weighted, summed, and divided by the summed weights, cell by cell (ComfyUI's calc_cond_batch)."""
    sums = [torch.zeros(x.shape, device=x.device) for _ in plan.regions]
    for call in plan.calls:
        crops = torch.cat([x[:, :, region.rows, region.cols] for _, region in call])
        contexts = torch.cat(common_token_length(*(region.context for _, region in call)))
        ys = [region.y for _, region in call]
        extra = {} if ys[0] is None else {"y": torch.cat(ys)}
        estimates = evaluate(crops, contexts, len(call), **extra).chunk(len(call))
        for (index, region), estimate in zip(call, estimates):
            sums[index][:, :, region.rows, region.cols] += estimate * region.weight
    return [total / weight for total, weight in zip(sums, plan.totals)]


class GuidedDenoiser:
    """denoiser(x, sigma) -> x0 estimate, float32, for a batch of latents x [B, C, H, W] at sigma [B].

    `before_each_call` runs before every model evaluation (samplers with two evaluations per step call it twice):
    the place to stop a run that was asked to stop. `adm` is the family's ADM kind (sd.family.adm: "sdxl",
    "refiner"; None for SD 1.x/2.x, whose UNet is called without y).
    """

    def __init__(self, unet: Callable, schedule: DiscreteSchedule, positive, negative, cfg: float,
                 before_each_call: Callable[[], None] | None = None, adm: str | None = None):
        self.unet, self.schedule, self.cfg, self.adm = unet, schedule, float(cfg), adm
        positive = as_conditioning(positive, "positive")
        negative = None if negative is None else as_conditioning(negative, "negative")
        self.skip_negative = negative is None or math.isclose(self.cfg, 1.0)
        self.conditionings = (positive, negative or ())
        self.plain = is_plain(positive) and is_plain(negative)
        if self.plain:
            self.plain_conds = (positive[0], None if negative is None else negative[0])
            self.positive = positive[0].context
            self.negative = None if negative is None else negative[0].context
            if not self.skip_negative and self.positive.shape[1] != self.negative.shape[1]:
                self.positive, self.negative = common_token_length(self.positive, self.negative)
        self.before_each_call = before_each_call
        self._context: dict[tuple, torch.Tensor] = {}  # by (batch, device): built once, not at every call
        self._y: dict[tuple, torch.Tensor] = {}  # by (latent shape, device)
        self._plans: dict[tuple, RegionPlan] = {}  # by (shape, device)

    def context(self, batch: int, device: torch.device) -> torch.Tensor:
        """The UNet's context for a batch of latents: the positive prompt, then the negative unless skipped."""
        key = (batch, device)
        if key not in self._context:
            parts = [self.positive] if self.skip_negative else [self.positive, self.negative]
            self._context[key] = torch.cat([repeat_to_batch(part, batch) for part in parts]).to(device)
        return self._context[key]

    def y(self, x: torch.Tensor) -> torch.Tensor | None:
        """The plain path's y for a batch of latents x: the positive's vectors, then the negative's unless
        skipped (each with its own defaults, from x's size); None for models without an ADM."""
        if self.adm is None:
            return None
        key = (tuple(x.shape), x.device)
        if key not in self._y:
            height, width = x.shape[-2:]
            sides = self.plain_conds[:1] if self.skip_negative else self.plain_conds
            self._y[key] = torch.cat([repeat_to_batch(cond_adm(c, self.adm, height, width, negative=index == 1),
                                                      x.shape[0]) for index, c in enumerate(sides)]).to(x.device)
        return self._y[key]

    def model(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The UNet's output, float32; y passed only to models that take one."""
        output = self.unet(x, t, context) if y is None else self.unet(x, t, context, y=y)
        return output.float()

    def plan(self, x: torch.Tensor) -> RegionPlan:
        key = (tuple(x.shape), x.device)
        if key not in self._plans:
            self._plans[key] = RegionPlan.build(self.conditionings, x.shape, x.device,
                                                evaluated=(True, not self.skip_negative), adm=self.adm)
        return self._plans[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.before_each_call is not None:
            self.before_each_call()
        if not self.plain:
            return self._guided_over_regions(x, sigma)
        model_input = self.schedule.model_input(sigma, x)
        timestep = self.schedule.timestep(sigma)
        context, y = self.context(x.shape[0], x.device), self.y(x)
        if self.skip_negative:
            return self.schedule.denoised(sigma, self.model(model_input, timestep, context, y), x)
        output = self.model(torch.cat([model_input, model_input]), torch.cat([timestep, timestep]), context, y)
        cond, uncond = (self.schedule.denoised(sigma, part, x) for part in output.chunk(2))
        return uncond + (cond - uncond) * self.cfg

    def _guided_over_regions(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        timestep = self.schedule.timestep(sigma)

        def evaluate(crops: torch.Tensor, contexts: torch.Tensor, chunks: int, y: torch.Tensor | None = None):
            sigmas = sigma.repeat(chunks)
            output = self.model(self.schedule.model_input(sigmas, crops), timestep.repeat(chunks), contexts, y)
            return self.schedule.denoised(sigmas, output, crops)

        cond, uncond = combine_regions(self.plan(x), x, evaluate)
        if self.skip_negative:
            return cond
        return uncond + (cond - uncond) * self.cfg
