"""Sampling: DDPM with classifier-free guidance, reporting each step with a small preview."""

import torch
from PIL import Image
from pydantic import Field, ValidationInfo, field_validator

from nodegraph.nodes import Link, Node, NodeInputs, RunContext
from nodegraph.sd import sample
from nodegraph.sd.ddpm import kept_timesteps

MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed accepts

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


class DDPMSample(Node):
    CATEGORY = "sampling"
    DESCRIPTION = ("Denoise a latent with DDPM and classifier-free guidance. denoise 1 starts from pure noise "
                   "(the input latent gives only the size); lower values keep more of the input (img2img).")
    OUTPUTS = {"latent": "LATENT"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the UNet, from LoadCheckpoint")
        positive: Link["CONDITIONING"] = Field(description="what the image should show")
        negative: Link["CONDITIONING"] = Field(description="what it should not show")
        latent: Link["LATENT"] = Field(description="the starting latent (EmptyLatent, or VAEEncode for img2img)")
        seed: int = Field(0, ge=0, le=MAX_SEED, description="noise seed: the same seed gives the same image")
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
        def on_step(step: int, total: int, x: torch.Tensor) -> None:
            ctx.report_progress(step, total, latent_preview(x[0]))  # raises Interrupted when asked to stop

        result = sample(model, positive, negative, latent, seed=seed, steps=steps, cfg=cfg, denoise=denoise,
                        callback=on_step)
        return {"latent": result}


NODES = [DDPMSample]
