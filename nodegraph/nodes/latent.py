"""Latents: empty ones to start from, and the VAE between pixels and latents."""

import torch
from pydantic import Field

from nodegraph.nodes import Latent, Link, Node, NodeInputs, RunContext

LATENT_CHANNELS = 4  # SD 1.x
LATENT_FACTOR = 8  # pixels per latent cell along each side, SD 1.x


class EmptyLatent(Node):
    CATEGORY = "latent"
    DESCRIPTION = "A blank latent of the given pixel size, for text-to-image (the sampler replaces it with noise)."
    OUTPUTS = {"latent": "LATENT"}

    class Inputs(NodeInputs):
        width: int = Field(512, ge=LATENT_FACTOR, le=8192, multiple_of=LATENT_FACTOR, description="width in pixels")
        height: int = Field(512, ge=LATENT_FACTOR, le=8192, multiple_of=LATENT_FACTOR, description="height in pixels")
        batch_size: int = Field(1, ge=1, le=64, description="images per run")

    def run(self, ctx: RunContext, width, height, batch_size):
        shape = (batch_size, LATENT_CHANNELS, height // LATENT_FACTOR, width // LATENT_FACTOR)
        return {"latent": Latent(torch.zeros(shape, dtype=torch.float32))}


class VAEEncode(Node):
    COMFY_TYPE = None  # ComfyUI's VAEEncode takes (pixels, vae): see ComfyUI.VAEEncode
    CATEGORY = "latent"
    DESCRIPTION = ("Encode images to latents (for img2img). Sides that are not multiples of 8 are cropped, centred, "
                   "to the multiple of 8 below (at most 7 pixels go); resize first with ImageScale to keep everything.")
    OUTPUTS = {"latent": "LATENT"}

    class Inputs(NodeInputs):
        vae: Link["VAE"] = Field(description="the VAE, from LoadCheckpoint")
        image: Link["IMAGE"] = Field(description="the images to encode")

    def run(self, ctx: RunContext, vae, image):
        image = crop_to_multiple(image, LATENT_FACTOR)
        return {"latent": Latent(vae.vae.encode(image * 2.0 - 1.0).float().cpu())}


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """The centred region of `image` whose sides are the largest multiples of `multiple` that fit."""
    height, width = image.shape[-2:]
    new_height, new_width = height - height % multiple, width - width % multiple
    if new_height == 0 or new_width == 0:
        raise ValueError(f"the image is {width}x{height}; each side needs at least {multiple} pixels")
    top, left = (height - new_height) // 2, (width - new_width) // 2
    return image[..., top : top + new_height, left : left + new_width]


class VAEDecode(Node):
    COMFY_TYPE = None  # ComfyUI's VAEDecode takes (samples, vae): see ComfyUI.VAEDecode
    CATEGORY = "latent"
    DESCRIPTION = "Decode latents to images."
    OUTPUTS = {"image": "IMAGE"}

    class Inputs(NodeInputs):
        vae: Link["VAE"] = Field(description="the VAE, from LoadCheckpoint")
        latent: Link["LATENT"] = Field(description="the latents to decode")

    def run(self, ctx: RunContext, vae, latent):
        pixels = vae.vae.decode(latent.samples).float().cpu()
        return {"image": ((pixels + 1.0) / 2.0).clamp(0.0, 1.0)}


NODES = [EmptyLatent, VAEEncode, VAEDecode]
