"""The VAE between pixels and latents: our VAEEncode / VAEDecode, ComfyUI's (other input names, same functions),
inpainting's encode, and the tiled encode and decode for big pictures.

Pixels go in as IMAGE in [0, 1] and reach the VAE in [-1, 1]; sides that are not multiples of 8 are cropped, centred,
to the multiple below (ComfyUI's VAE does the same, offset (side % 8) // 2). Decoded pixels come back clamped to
[0, 1]. Latents are raw VAE space (posterior means), as ComfyUI keeps them.
"""

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from nodegraph.nodes import Latent, Link, Node, NodeInputs, RunContext
from nodegraph.nodes.latent import LATENT_FACTOR
from nodegraph.sd.tiled import TileError, decode_tiled, encode_tiled


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """The centred region of `image` whose sides are the largest multiples of `multiple` that fit."""
    height, width = image.shape[-2:]
    new_height, new_width = height - height % multiple, width - width % multiple
    if new_height == 0 or new_width == 0:
        raise ValueError(f"the image is {width}x{height}; each side needs at least {multiple} pixels")
    top, left = (height - new_height) // 2, (width - new_width) // 2
    return image[..., top : top + new_height, left : left + new_width]


def encode_pixels(sd, image: torch.Tensor) -> Latent:
    """IMAGE [B, 3, H, W] in [0, 1] -> Latent, cropped to multiples of 8 first."""
    image = crop_to_multiple(image, LATENT_FACTOR)
    return Latent(sd.vae.encode(image * 2.0 - 1.0).float().cpu())


def to_image(pixels: torch.Tensor) -> torch.Tensor:
    """VAE output in [-1, 1] (unclamped) -> IMAGE in [0, 1]."""
    return ((pixels.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)


def decode_latent(sd, latent: Latent) -> torch.Tensor:
    """Latent -> IMAGE [B, 3, 8h, 8w] in [0, 1] (a noise mask changes nothing here)."""
    return to_image(sd.vae.decode(latent.samples))


class VAEEncode(Node):
    COMFY_TYPE = None  # ComfyUI's VAEEncode takes (pixels, vae): see ComfyUI.VAEEncode
    NATIVE = True
    CATEGORY = "latent"
    DESCRIPTION = ("Encode images to latents (for img2img). Sides that are not multiples of 8 are cropped, centred, "
                   "to the multiple of 8 below (at most 7 pixels go); resize first with ImageScale to keep everything.")
    OUTPUTS = {"latent": "LATENT"}

    class Inputs(NodeInputs):
        vae: Link["VAE"] = Field(description="the VAE, from LoadCheckpoint")
        image: Link["IMAGE"] = Field(description="the images to encode")

    def run(self, ctx: RunContext, vae, image):
        return {"latent": encode_pixels(vae, image)}


class VAEDecode(Node):
    COMFY_TYPE = None  # ComfyUI's VAEDecode takes (samples, vae): see ComfyUI.VAEDecode
    NATIVE = True
    CATEGORY = "latent"
    DESCRIPTION = "Decode latents to images."
    OUTPUTS = {"image": "IMAGE"}

    class Inputs(NodeInputs):
        vae: Link["VAE"] = Field(description="the VAE, from LoadCheckpoint")
        latent: Link["LATENT"] = Field(description="the latents to decode")

    def run(self, ctx: RunContext, vae, latent):
        return {"image": decode_latent(vae, latent)}


class ComfyVAEEncode(Node):
    TYPE = "ComfyUI.VAEEncode"
    COMFY_TYPE = "VAEEncode"
    DISPLAY_NAME = "VAE Encode"
    CATEGORY = "latent"
    DESCRIPTION = "ComfyUI's VAEEncode: images to latents, sides cropped (centred) to multiples of 8."
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        pixels: Link["IMAGE"] = Field(description="the images to encode")
        vae: Link["VAE"] = Field(description="the VAE")

    def run(self, ctx: RunContext, pixels, vae):
        return {"LATENT": encode_pixels(vae, pixels)}


class ComfyVAEDecode(Node):
    TYPE = "ComfyUI.VAEDecode"
    COMFY_TYPE = "VAEDecode"
    DISPLAY_NAME = "VAE Decode"
    CATEGORY = "latent"
    DESCRIPTION = "ComfyUI's VAEDecode: latents back to images."
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        samples: Link["LATENT"] = Field(description="the latents to decode")
        vae: Link["VAE"] = Field(description="the VAE")

    def run(self, ctx: RunContext, samples, vae):
        return {"IMAGE": decode_latent(vae, samples)}


class VAEEncodeForInpaint(Node):
    DISPLAY_NAME = "VAE Encode (for Inpainting)"
    CATEGORY = "latent/inpaint"
    DESCRIPTION = ("Encode images for inpainting: the masked pixels become neutral grey before encoding (so the "
                   "sampler paints them afresh, at full denoise), and the latent carries the mask, grown by "
                   "grow_mask_by pixels, as its noise mask.")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        pixels: Link["IMAGE"] = Field(description="the images to inpaint")
        vae: Link["VAE"] = Field(description="the VAE")
        mask: Link["MASK"] = Field(description="1 = repaint (any resolution: resized to the images')")
        grow_mask_by: int = Field(6, ge=0, le=64, description="pixels the noise mask grows by, for seamless edges")

    def run(self, ctx: RunContext, pixels, vae, mask, grow_mask_by):
        pixels, noise_mask = inpaint_pixels(pixels, mask, grow_mask_by)
        return {"LATENT": encode_pixels(vae, pixels).replace(noise_mask=noise_mask)}


def inpaint_pixels(pixels: torch.Tensor, mask: torch.Tensor, grow_mask_by: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VAEEncodeForInpaint's preparation: (pixels cropped to multiples of 8 with the masked ones set to 0.5, the noise
    mask [B, h, w] of 0s and 1s). The mask is resized bilinearly to the picture and rounded; the noise mask is it
    grown by a grow_mask_by-square box (ComfyUI's padding, which grows one pixel more towards the bottom right for
    even sizes)."""
    height, width = pixels.shape[-2:]
    mask = F.interpolate(mask.reshape((-1, 1) + tuple(mask.shape[-2:])).float(), size=(height, width),
                         mode="bilinear")
    if mask.shape[0] not in (1, pixels.shape[0]):
        raise ValueError(f"the mask has {mask.shape[0]} pictures and pixels {pixels.shape[0]}: "
                         "VAEEncodeForInpaint needs one mask, or one per picture")
    pixels, mask = crop_to_multiple(pixels, LATENT_FACTOR), crop_to_multiple(mask, LATENT_FACTOR)
    if grow_mask_by == 0:
        grown = mask
    else:
        box = torch.ones(1, 1, grow_mask_by, grow_mask_by)
        grown = F.conv2d(mask.round(), box, padding=math.ceil((grow_mask_by - 1) / 2)).clamp(0, 1)
    keep = 1.0 - mask.round()
    grey = (pixels - 0.5) * keep + 0.5
    return grey, grown[..., : mask.shape[-2], : mask.shape[-1]].round()[:, 0]


class VAEDecodeTiled(Node):
    DISPLAY_NAME = "VAE Decode (Tiled)"
    CATEGORY = "_for_testing"
    DESCRIPTION = ("Decode latents in overlapping tiles, for pictures too big to decode at once: three passes of "
                   "tile_size-pixel tiles (square, wide, tall) blended over the overlap and averaged, as ComfyUI does. "
                   "Close to VAEDecode, not equal (each tile sees only its part of the picture). The temporal "
                   "inputs are for video VAEs and change nothing here.")
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        samples: Link["LATENT"] = Field(description="the latents to decode")
        vae: Link["VAE"] = Field(description="the VAE")
        tile_size: int = Field(512, ge=64, le=4096, description="tile side in pixels", json_schema_extra={"step": 32})
        overlap: int = Field(64, ge=0, le=4096, description="pixels neighbouring tiles share (at most tile_size / 4)",
                             json_schema_extra={"step": 32})
        temporal_size: int = Field(64, ge=8, le=4096, json_schema_extra={"step": 4},
                                   description="only used for video VAEs: frames to decode at a time")
        temporal_overlap: int = Field(8, ge=4, le=4096, json_schema_extra={"step": 4},
                                      description="only used for video VAEs: frames to overlap")

    def run(self, ctx: RunContext, samples, vae, tile_size, overlap, temporal_size, temporal_overlap):
        if tile_size < overlap * 4:  # ComfyUI's rule: an overlap of at most a quarter of the tile
            overlap = tile_size // 4
        cells = tile_size // LATENT_FACTOR
        pixels = decode_tiled(vae.vae, samples.samples, cells, cells, overlap // LATENT_FACTOR,
                              on_tile=tile_reporter(ctx))
        return {"IMAGE": to_image(pixels)}


class VAEEncodeTiled(Node):
    DISPLAY_NAME = "VAE Encode (Tiled)"
    CATEGORY = "_for_testing"
    DESCRIPTION = ("Encode images in overlapping tiles, for pictures too big to encode at once: three passes of "
                   "tile_size-pixel tiles (square, wide, tall) blended over the overlap and averaged, as ComfyUI does. "
                   "Close to VAEEncode, not equal. The temporal inputs are for video VAEs and change nothing here.")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        pixels: Link["IMAGE"] = Field(description="the images to encode")
        vae: Link["VAE"] = Field(description="the VAE")
        tile_size: int = Field(512, ge=64, le=4096, description="tile side in pixels", json_schema_extra={"step": 64})
        overlap: int = Field(64, ge=0, le=4096, description="pixels neighbouring tiles share (below tile_size / 2)",
                             json_schema_extra={"step": 32})
        temporal_size: int = Field(64, ge=8, le=4096, json_schema_extra={"step": 4},
                                   description="only used for video VAEs: frames to encode at a time")
        temporal_overlap: int = Field(8, ge=4, le=4096, json_schema_extra={"step": 4},
                                      description="only used for video VAEs: frames to overlap")

    def run(self, ctx: RunContext, pixels, vae, tile_size, overlap, temporal_size, temporal_overlap):
        pixels = crop_to_multiple(pixels, LATENT_FACTOR)
        try:
            latent = encode_tiled(vae.vae, pixels * 2.0 - 1.0, tile_size, tile_size, overlap,
                                  on_tile=tile_reporter(ctx))
        except TileError as error:
            raise ValueError(f"VAEEncodeTiled: overlap {overlap} is too large for tile_size {tile_size} (the tall "
                             f"and wide passes use tiles of {tile_size // 2} pixels): {error}") from error
        return {"LATENT": Latent(latent)}


def tile_reporter(ctx: RunContext | None):
    """Progress per tile (and a chance to stop between tiles)."""
    if ctx is None:
        return None
    return lambda done, total: ctx.report_progress(done, total)


NODES = [VAEEncode, VAEDecode, ComfyVAEEncode, ComfyVAEDecode, VAEEncodeForInpaint, VAEDecodeTiled, VAEEncodeTiled]
