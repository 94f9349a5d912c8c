"""Samplers by ComfyUI's names: the step rule, and the two facts KSampler needs about each."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .context import Denoiser, SamplerContext
try:  # TEMPORARY while the families are written
    from .k_samplers import K_SAMPLERS
except ImportError:
    K_SAMPLERS = {}
try:
    from .step_samplers import STEP_SAMPLERS
except ImportError:
    STEP_SAMPLERS = {}
try:
    from .uni_pc import UNI_PC_SAMPLERS
except ImportError:
    UNI_PC_SAMPLERS = {}

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


_RULES = {**K_SAMPLERS, **STEP_SAMPLERS, **UNI_PC_SAMPLERS}
_ORDER = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_sde",
          "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
          "ddpm", "lcm", "ddim", "uni_pc", "uni_pc_bh2")  # ComfyUI's order, less what we lack
_DISCARDING = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}

SAMPLERS: dict[str, Sampler] = {}
for _name in _ORDER:
    if _name == "ddim" and "euler" in _RULES:  # ComfyUI's "ddim" is euler (DDIM with eta 0 is the probability-flow ODE's Euler step)
        SAMPLERS[_name] = Sampler(_name, _RULES["euler"], random_inpaint_noise=True)
    elif _name in _RULES:
        SAMPLERS[_name] = Sampler(_name, _RULES[_name], discards_penultimate_sigma=_name in _DISCARDING)
SAMPLER_NAMES = tuple(SAMPLERS)


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLER_NAMES)}")
    return SAMPLERS[name]
