"""Samplers by ComfyUI's names: the step rule, and the two facts KSampler needs about each."""

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .context import Denoiser, SamplerContext
from .k_samplers import K_SAMPLERS
from .step_samplers import STEP_SAMPLERS
from .uni_pc import UNI_PC_SAMPLERS

SamplerFunction = Callable[[Denoiser, torch.Tensor, torch.Tensor, SamplerContext], torch.Tensor]


@dataclass(frozen=True)
class Sampler:
    name: str
    step: SamplerFunction
    # KSampler computes one sigma more and drops the second to last: these samplers' last step would otherwise be a
    # tiny one from a very low sigma, where their second evaluation (or UniPC's corrector) does more harm than good.
    discards_penultimate_sigma: bool = False
    # Inpainting: the masked-out area is noised with fresh noise (seed + 1) rather than the initial noise.
    random_inpaint_noise: bool = False


def brownian_tree_on_device(step: SamplerFunction) -> SamplerFunction:
    """The `_gpu` variant of an SDE sampler: the same rule, its Brownian tree on the latent's device."""
    def on_device(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
        return step(model, x, sigmas, replace(ctx, brownian_on_device=True))
    return on_device


_RULES = {**K_SAMPLERS, **STEP_SAMPLERS, **UNI_PC_SAMPLERS}
_RULES.update({f"{name}_gpu": brownian_tree_on_device(_RULES[name])
               for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde")})
_ORDER = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_sde",
          "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
          "ddpm", "lcm", "ddim", "uni_pc", "uni_pc_bh2")  # ComfyUI's order, less the samplers we lack
_DISCARDING = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}

SAMPLERS: dict[str, Sampler] = {}
for _name in _ORDER:
    if _name == "ddim":  # ComfyUI's "ddim" is euler (DDIM with eta 0 is the probability-flow ODE's Euler step)
        SAMPLERS[_name] = Sampler(_name, _RULES["euler"], random_inpaint_noise=True)
    else:
        SAMPLERS[_name] = Sampler(_name, _RULES[_name], discards_penultimate_sigma=_name in _DISCARDING)
SAMPLER_NAMES = tuple(SAMPLERS)


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLER_NAMES)}")
    return SAMPLERS[name]
