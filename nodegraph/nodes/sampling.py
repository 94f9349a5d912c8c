"""Sampling nodes: ComfyUI's KSampler family (its class names, inputs, defaults and outputs) and our DDPMSample.

Each shows a live preview of the denoised estimate after every step and can be stopped between model evaluations.
"""

import torch
from PIL import Image
from pydantic import Field, ValidationInfo, field_validator
from typing import Literal

from nodegraph.nodes import Latent, Link, Node, NodeInputs, RunContext
from nodegraph.sd import sample
from nodegraph.sd.ddpm import kept_timesteps
from nodegraph.sd.sampling import SAMPLER_NAMES, SCHEDULER_NAMES, sample_along, sample_ksampler

MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed accepts (ComfyUI's 0xffffffffffffffff)
MAX_STEPS = 10000  # ComfyUI's bound

# A rough linear map from SD 1.x latent channels (scaled by latent_scale, as the sampler holds them) to RGB in
# [-1, 1]. Hand-set coarse values, not the VAE: good enough to watch a picture form, nothing more.
LATENT_TO_RGB = torch.tensor([
    #  R     G     B
    [0.30, 0.20, 0.30],
    [0.30, 0.50, 0.20],
    [-0.30, 0.20, 0.30],
    [-0.20, -0.30, -0.70],
])


def latent_preview(latent: torch.Tensor) -> Image.Image:
    """An RGB approximation of one sampler latent [4, h, w] (scaled space), one pixel per latent cell."""
    rgb = torch.einsum("chw,cr->hwr", latent.detach().float().cpu(), LATENT_TO_RGB)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
    return Image.fromarray(pixels.contiguous().numpy(), "RGB")


def progress_reporter(ctx: RunContext):
    """A sampler callback that reports each step with a preview of its first picture (and stops when asked)."""
    def on_step(step: int, total: int, latent: torch.Tensor) -> None:
        ctx.report_progress(step, total, latent_preview(latent[0]))  # raises Interrupted when asked to stop
    return on_step


def latent_options(ctx: RunContext, latent: Latent) -> dict:
    """What every sampler node passes on: progress, interrupts, and the latent's noise mask and batch indices
    (ComfyUI keeps both on its output latent too)."""
    return dict(callback=progress_reporter(ctx), check_interrupt=ctx.check_interrupt,
                noise_mask=latent.noise_mask, batch_index=latent.batch_index)


SamplerName = Literal[SAMPLER_NAMES]
SchedulerName = Literal[SCHEDULER_NAMES]


class DDPMSample(Node):
    NATIVE = True
    CATEGORY = "sampling"
    DESCRIPTION = ("Denoise a latent with DDPM and classifier-free guidance. denoise 1 starts from pure noise "
                   "(the input latent gives only the size); lower values keep more of the input (img2img).")
    OUTPUTS = {"latent": "LATENT"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the UNet, from LoadCheckpoint")
        positive: Link["CONDITIONING"] = Field(description="what the image should show")
        negative: Link["CONDITIONING"] = Field(description="what it should not show")
        latent: Link["LATENT"] = Field(description="the starting latent (EmptyLatent, or VAEEncode for img2img)")
        seed: int = Field(0, ge=0, le=MAX_SEED, description="noise seed: the same seed gives the same image",
                          json_schema_extra={"control_after_generate": True})
        steps: int = Field(20, ge=1, le=1000, description="sampler steps (for the full schedule)")
        cfg: float = Field(7.5, ge=0.0, le=100.0, description="guidance scale; <= 1 skips the negative prompt")
        denoise: float = Field(1.0, gt=0.0, le=1.0, description="how much to change the input: 1 = all of it")

        @field_validator("denoise")
        @classmethod
        def _runs_at_least_one_step(cls, denoise: float, info: ValidationInfo) -> float:
            if "steps" in info.data:
                kept_timesteps(info.data["steps"], denoise)  # raises ValueError when steps * denoise < 1
            return denoise

    def run(self, ctx: RunContext, model, positive, negative, latent, seed, steps, cfg, denoise):
        if latent.noise_mask is not None:
            raise ValueError("DDPMSample does not inpaint: the latent has a noise mask; use KSampler (any sampler)")
        result = sample(model, positive, negative, latent.samples, seed=seed, steps=steps, cfg=cfg, denoise=denoise,
                        callback=progress_reporter(ctx))
        return {"latent": latent.replace(samples=result)}


class KSampler(Node):
    CATEGORY = "sampling"
    DESCRIPTION = ("ComfyUI's KSampler: denoise a latent with a sampler and a scheduler; the same seed and settings "
                   "give ComfyUI's picture. denoise < 1 keeps that much of the input latent's picture (img2img).")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the model, from a checkpoint loader")
        seed: int = Field(0, ge=0, le=MAX_SEED, description="noise seed: the same seed gives the same image",
                          json_schema_extra={"control_after_generate": True})
        steps: int = Field(20, ge=1, le=MAX_STEPS, description="sampler steps")
        cfg: float = Field(8.0, ge=0.0, le=100.0, description="guidance scale; 1 skips the negative prompt")
        sampler_name: SamplerName = Field("euler", description="the step rule (see the README's sampler table)")
        scheduler: SchedulerName = Field("normal", description="how the noise levels are spaced over the steps")
        positive: Link["CONDITIONING"] = Field(description="what the image should show")
        negative: Link["CONDITIONING"] = Field(description="what it should not show")
        latent_image: Link["LATENT"] = Field(description="the starting latent (empty for text-to-image)")
        denoise: float = Field(1.0, ge=0.0, le=1.0, description="how much to change the input: 1 = all of it")

        @field_validator("denoise")
        @classmethod
        def _runs_a_step(cls, denoise: float) -> float:
            if denoise <= 0.0:
                raise ValueError("denoise 0 runs no step: it must be above 0 (1 = text-to-image)")
            return denoise

    def run(self, ctx: RunContext, model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
            latent_image, denoise):
        result = sample_ksampler(model, positive, negative, latent_image.samples, seed=seed, steps=steps, cfg=cfg,
                                 sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
                                 **latent_options(ctx, latent_image))
        return {"LATENT": latent_image.replace(samples=result.latent)}


class KSamplerAdvanced(Node):
    DISPLAY_NAME = "KSampler (Advanced)"
    CATEGORY = "sampling"
    DESCRIPTION = ("KSampler over a range of its steps: run steps start_at_step..end_at_step of the schedule, with "
                   "or without adding noise first and with or without denoising what is left (for splitting one "
                   "run between two models or two prompts).")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the model, from a checkpoint loader")
        add_noise: Literal["enable", "disable"] = Field(
            "enable", description="disable for a latent that already carries its noise (a run's leftover)")
        noise_seed: int = Field(0, ge=0, le=MAX_SEED, description="noise seed: the same seed gives the same image",
                          json_schema_extra={"control_after_generate": True})
        steps: int = Field(20, ge=1, le=MAX_STEPS, description="steps of the whole schedule")
        cfg: float = Field(8.0, ge=0.0, le=100.0, description="guidance scale; 1 skips the negative prompt")
        sampler_name: SamplerName = Field("euler", description="the step rule (see the README's sampler table)")
        scheduler: SchedulerName = Field("normal", description="how the noise levels are spaced over the steps")
        positive: Link["CONDITIONING"] = Field(description="what the image should show")
        negative: Link["CONDITIONING"] = Field(description="what it should not show")
        latent_image: Link["LATENT"] = Field(description="the starting latent")
        start_at_step: int = Field(0, ge=0, le=MAX_STEPS, description="the first step to run")
        end_at_step: int = Field(10000, ge=0, le=MAX_STEPS, description="the step to stop at (beyond steps: the end)")
        return_with_leftover_noise: Literal["disable", "enable"] = Field(
            "disable", description="enable to stop with the remaining noise in the latent, for another sampler")

        @field_validator("end_at_step")
        @classmethod
        def _runs_a_step(cls, end_at_step: int, info: ValidationInfo) -> int:
            start, steps = info.data.get("start_at_step"), info.data.get("steps")
            if start is not None and start >= end_at_step:
                raise ValueError(f"start_at_step {start} >= end_at_step {end_at_step} runs no step: "
                                 "start_at_step must be below end_at_step")
            if start is not None and steps is not None and start >= steps:
                raise ValueError(f"start_at_step {start} is not below steps {steps}: no step is left to run")
            return end_at_step

    def run(self, ctx: RunContext, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive,
            negative, latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        result = sample_ksampler(model, positive, negative, latent_image.samples, seed=noise_seed, steps=steps,
                                 cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                                 add_noise=add_noise == "enable", start_step=start_at_step, end_step=end_at_step,
                                 force_full_denoise=return_with_leftover_noise == "disable",
                                 **latent_options(ctx, latent_image))
        return {"LATENT": latent_image.replace(samples=result.latent)}


class SamplerCustom(Node):
    CATEGORY = "sampling/custom_sampling"
    DESCRIPTION = ("Sample with a sampler (KSamplerSelect) along given noise levels (a scheduler node); outputs the "
                   "result and the last step's denoised estimate.")
    OUTPUTS = {"output": "LATENT", "denoised_output": "LATENT"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the model, from a checkpoint loader")
        add_noise: bool = Field(True, description="noise the latent to the first sigma first")
        noise_seed: int = Field(0, ge=0, le=MAX_SEED, description="noise seed: the same seed gives the same image",
                          json_schema_extra={"control_after_generate": True})
        cfg: float = Field(8.0, ge=0.0, le=100.0, description="guidance scale; 1 skips the negative prompt")
        positive: Link["CONDITIONING"] = Field(description="what the image should show")
        negative: Link["CONDITIONING"] = Field(description="what it should not show")
        sampler: Link["SAMPLER"] = Field(description="the step rule, from KSamplerSelect")
        sigmas: Link["SIGMAS"] = Field(description="the noise levels to step along, from a scheduler node")
        latent_image: Link["LATENT"] = Field(description="the starting latent")

    def run(self, ctx: RunContext, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas,
            latent_image):
        result = sample_along(model, positive, negative, latent_image.samples, sigmas, sampler=sampler,
                              seed=noise_seed, cfg=cfg, add_noise=add_noise, **latent_options(ctx, latent_image))
        return {"output": latent_image.replace(samples=result.latent),
                "denoised_output": latent_image.replace(samples=result.denoised)}


NODES = [DDPMSample, KSampler, KSamplerAdvanced, SamplerCustom]
