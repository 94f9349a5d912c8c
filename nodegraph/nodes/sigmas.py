"""ComfyUI's custom-sampling parts: a sampler by name (SAMPLER) and noise-level lists (SIGMAS) to sample along."""

from typing import Literal

import torch
from pydantic import Field

from nodegraph.nodes import Link, Node, NodeInputs, RunContext
from nodegraph.sd.sampling import (SAMPLER_NAMES, SCHEDULER_NAMES, exponential_sigmas, get_sampler, karras_sigmas,
                                   ksampler_sigmas, sd_turbo_sigmas)

MAX_STEPS = 10000
SIGMA_MAX, SIGMA_MIN = 14.614642, 0.0291675  # SD 1.x's, as ComfyUI's scheduler nodes default to


class KSamplerSelect(Node):
    CATEGORY = "sampling/custom_sampling/samplers"
    DESCRIPTION = "A sampler (step rule) by name, for SamplerCustom."
    OUTPUTS = {"SAMPLER": "SAMPLER"}

    class Inputs(NodeInputs):
        sampler_name: Literal[SAMPLER_NAMES] = Field("euler", description="the step rule")

    def run(self, ctx: RunContext, sampler_name):
        return {"SAMPLER": get_sampler(sampler_name)}


class BasicScheduler(Node):
    CATEGORY = "sampling/custom_sampling/schedulers"
    DESCRIPTION = ("A scheduler's noise levels for the model, as KSampler computes them; denoise < 1 keeps the last "
                   "steps of a longer schedule (img2img).")
    OUTPUTS = {"SIGMAS": "SIGMAS"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the model, whose noise schedule is spaced out")
        scheduler: Literal[SCHEDULER_NAMES] = Field("normal", description="how the noise levels are spaced")
        steps: int = Field(20, ge=1, le=MAX_STEPS, description="sampler steps")
        denoise: float = Field(1.0, ge=0.0, le=1.0, description="how much of the schedule to run: 1 = all of it")

    def run(self, ctx: RunContext, model, scheduler, steps, denoise):
        if denoise <= 0.0:  # ComfyUI's empty list; a sampler given it says so clearly
            return {"SIGMAS": torch.zeros(0)}
        # the scheduler's own list: BasicScheduler knows no sampler, so no penultimate sigma is dropped
        return {"SIGMAS": ksampler_sigmas(model.schedule, scheduler, steps, denoise)}


class KarrasScheduler(Node):
    CATEGORY = "sampling/custom_sampling/schedulers"
    DESCRIPTION = "Karras et al.'s noise levels: evenly spaced in sigma^(1/rho), crowding the steps at low noise."
    OUTPUTS = {"SIGMAS": "SIGMAS"}

    class Inputs(NodeInputs):
        steps: int = Field(20, ge=1, le=MAX_STEPS, description="sampler steps")
        sigma_max: float = Field(SIGMA_MAX, ge=0.0, le=5000.0, description="the first noise level")
        sigma_min: float = Field(SIGMA_MIN, ge=0.0, le=5000.0, description="the last noise level before 0")
        rho: float = Field(7.0, ge=0.0, le=100.0, description="higher: more steps at low noise")

    def run(self, ctx: RunContext, steps, sigma_max, sigma_min, rho):
        return {"SIGMAS": karras_sigmas(steps, sigma_min, sigma_max, rho)}


class ExponentialScheduler(Node):
    CATEGORY = "sampling/custom_sampling/schedulers"
    DESCRIPTION = "Noise levels evenly spaced in log sigma."
    OUTPUTS = {"SIGMAS": "SIGMAS"}

    class Inputs(NodeInputs):
        steps: int = Field(20, ge=1, le=MAX_STEPS, description="sampler steps")
        sigma_max: float = Field(SIGMA_MAX, ge=0.0, le=5000.0, description="the first noise level")
        sigma_min: float = Field(SIGMA_MIN, ge=0.0, le=5000.0, description="the last noise level before 0")

    def run(self, ctx: RunContext, steps, sigma_max, sigma_min):
        return {"SIGMAS": exponential_sigmas(steps, sigma_min, sigma_max)}


class SDTurboScheduler(Node):
    CATEGORY = "sampling/custom_sampling/schedulers"
    DESCRIPTION = "SD-Turbo's 1-10 step noise levels (timesteps 999, 899, ...); denoise < 1 starts further down."
    OUTPUTS = {"SIGMAS": "SIGMAS"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the model, whose noise schedule is used")
        steps: int = Field(1, ge=1, le=10, description="sampler steps")
        denoise: float = Field(1.0, ge=0.0, le=1.0, description="how much to change the input: 1 = all of it")

    def run(self, ctx: RunContext, model, steps, denoise):
        return {"SIGMAS": sd_turbo_sigmas(model.schedule, steps, denoise)}


class SplitSigmas(Node):
    CATEGORY = "sampling/custom_sampling/sigmas"
    DESCRIPTION = "Split noise levels at a step: high_sigmas runs steps 0..step, low_sigmas the rest (both hold it)."
    OUTPUTS = {"high_sigmas": "SIGMAS", "low_sigmas": "SIGMAS"}

    class Inputs(NodeInputs):
        sigmas: Link["SIGMAS"] = Field(description="the noise levels to split")
        step: int = Field(0, ge=0, le=MAX_STEPS, description="where to split")

    def run(self, ctx: RunContext, sigmas, step):
        return {"high_sigmas": sigmas[: step + 1], "low_sigmas": sigmas[step:]}


NODES = [KSamplerSelect, BasicScheduler, KarrasScheduler, ExponentialScheduler, SDTurboScheduler, SplitSigmas]
