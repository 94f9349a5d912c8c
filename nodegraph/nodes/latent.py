"""Latent nodes: empty latents to start from, resizing, batches, compositing, and the noise mask for inpainting.

ComfyUI's latent nodes (its class names, inputs, bounds and output names) and our EmptyLatent, over one function
per job. Sizes given in pixels become latent cells by // 8 (LATENT_FACTOR), as in ComfyUI. Every node keeps what it
does not change of the Latent it was given (noise mask, batch indices), as ComfyUI copies its latent dict.
"""

import math
from typing import Literal

import torch
from pydantic import Field

from nodegraph.nodes import Latent, Link, Node, NodeInputs, RunContext
from nodegraph.nodes.latent_resize import LATENT_UPSCALE_METHODS, resize_latent
from nodegraph.nodes.resize import CROP_METHODS

LATENT_CHANNELS = 4  # SD 1.x
LATENT_FACTOR = 8  # pixels per latent cell along each side, SD 1.x
MAX_RESOLUTION = 16384  # ComfyUI's bound on pixel sizes and offsets
MIN_UPSCALE_SIDE = 64  # LatentUpscale never makes a side smaller than this many pixels (ComfyUI's rule)

LatentUpscaleMethod = Literal[LATENT_UPSCALE_METHODS]  # ComfyUI offers no lanczos for latents
CropMethod = Literal[CROP_METHODS]


def pixel_step(default: int, minimum: int, description: str):
    """An INT input in pixels that ComfyUI's editor moves in steps of 8; ComfyUI does not refuse other values (its
    nodes divide by 8), so neither do we: the step is shown, not enforced."""
    return Field(default, ge=minimum, le=MAX_RESOLUTION, description=description,
                 json_schema_extra={"step": LATENT_FACTOR})


def empty_latent(width: int, height: int, batch_size: int) -> Latent:
    """`batch_size` all-zero latents for a width x height picture (the sampler replaces them with noise)."""
    shape = (batch_size, LATENT_CHANNELS, height // LATENT_FACTOR, width // LATENT_FACTOR)
    return Latent(torch.zeros(shape, dtype=torch.float32))


class EmptyLatent(Node):
    NATIVE = True
    CATEGORY = "latent"
    DESCRIPTION = "A blank latent of the given pixel size, for text-to-image (the sampler replaces it with noise)."
    OUTPUTS = {"latent": "LATENT"}

    class Inputs(NodeInputs):
        width: int = Field(512, ge=LATENT_FACTOR, le=8192, multiple_of=LATENT_FACTOR, description="width in pixels")
        height: int = Field(512, ge=LATENT_FACTOR, le=8192, multiple_of=LATENT_FACTOR, description="height in pixels")
        batch_size: int = Field(1, ge=1, le=64, description="images per run")

    def run(self, ctx: RunContext, width, height, batch_size):
        return {"latent": empty_latent(width, height, batch_size)}


class EmptyLatentImage(Node):
    DISPLAY_NAME = "Empty Latent Image"
    CATEGORY = "latent"
    DESCRIPTION = ("ComfyUI's empty latent: a batch of blank latents to be denoised by a sampler; sides are cut down "
                   "to multiples of 8 pixels.")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        width: int = pixel_step(512, 16, "the width of the latent images in pixels")
        height: int = pixel_step(512, 16, "the height of the latent images in pixels")
        batch_size: int = Field(1, ge=1, le=4096, description="the number of latent images in the batch")

    def run(self, ctx: RunContext, width, height, batch_size):
        return {"LATENT": empty_latent(width, height, batch_size)}


class LatentUpscale(Node):
    DISPLAY_NAME = "Upscale Latent"
    CATEGORY = "latent"
    DESCRIPTION = ("Resize latents to a pixel size (cut down to multiples of 8, at least 64). A side of 0 follows "
                   "the other one, keeping the aspect ratio; both 0 leaves the latent as it is.")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        samples: Link["LATENT"] = Field(description="the latents to resize")
        upscale_method: LatentUpscaleMethod = Field("nearest-exact", description="resampling filter")
        width: int = pixel_step(512, 0, "new width in pixels; 0 = from the height, keeping the aspect ratio")
        height: int = pixel_step(512, 0, "new height in pixels; 0 = from the width, keeping the aspect ratio")
        crop: CropMethod = Field("disabled", description="'center': keep the aspect ratio by cutting the overhang")

    def run(self, ctx: RunContext, samples, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return {"LATENT": samples}
        cells_high, cells_wide = samples.samples.shape[-2:]
        if width == 0:
            height = max(MIN_UPSCALE_SIDE, height)
            width = max(MIN_UPSCALE_SIDE, round(cells_wide * height / cells_high))
        elif height == 0:
            width = max(MIN_UPSCALE_SIDE, width)
            height = max(MIN_UPSCALE_SIDE, round(cells_high * width / cells_wide))
        else:
            width, height = max(MIN_UPSCALE_SIDE, width), max(MIN_UPSCALE_SIDE, height)
        resized = resize_latent(samples.samples, width // LATENT_FACTOR, height // LATENT_FACTOR, upscale_method, crop)
        return {"LATENT": samples.replace(samples=resized)}


class LatentUpscaleBy(Node):
    DISPLAY_NAME = "Upscale Latent By"
    CATEGORY = "latent"
    DESCRIPTION = "Resize latents by a factor (each side rounded to whole latent cells)."
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        samples: Link["LATENT"] = Field(description="the latents to resize")
        upscale_method: LatentUpscaleMethod = Field("nearest-exact", description="resampling filter")
        scale_by: float = Field(1.5, ge=0.01, le=8.0, description="the factor on both sides",
                                json_schema_extra={"step": 0.01})

    def run(self, ctx: RunContext, samples, upscale_method, scale_by):
        cells_high, cells_wide = samples.samples.shape[-2:]
        width, height = round(cells_wide * scale_by), round(cells_high * scale_by)
        if width < 1 or height < 1:
            raise ValueError(f"scale_by {scale_by} makes the {cells_wide}x{cells_high}-cell latent {width}x{height}: "
                             "it needs at least one latent cell per side")
        return {"LATENT": samples.replace(samples=resize_latent(samples.samples, width, height, upscale_method))}


class LatentFromBatch(Node):
    DISPLAY_NAME = "Get Latent From Batch"
    CATEGORY = "latent/batch"
    DESCRIPTION = ("Take `length` latents from a batch, starting at batch_index (negative counts from the end); "
                   "they keep the seed noise of their place in the batch.")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        samples: Link["LATENT"] = Field(description="the batch")
        batch_index: int = Field(0, ge=-MAX_RESOLUTION, le=MAX_RESOLUTION,
                                 description="the first latent to take; out-of-range values are clamped")
        length: int = Field(1, ge=1, le=64, description="how many to take (fewer if the batch ends first)")

    def run(self, ctx: RunContext, samples, batch_index, length):
        batch = samples.samples.shape[0]
        start = batch_index + batch if batch_index < 0 else batch_index
        start = max(0, min(batch - 1, start))
        length = min(batch - start, length)
        picked = slice(start, start + length)
        mask = samples.noise_mask
        if mask is not None and mask.shape[0] > 1:  # one mask for all stays as it is; else the items' own masks
            if mask.shape[0] < batch:
                mask = mask.repeat((math.ceil(batch / mask.shape[0]),) + (1,) * (mask.ndim - 1))[:batch]
            mask = mask[picked].clone()
        indices = samples.batch_index if samples.batch_index is not None else range(batch)
        return {"LATENT": samples.replace(samples=samples.samples[picked].clone(), noise_mask=mask,
                                          batch_index=tuple(indices[picked]))}


class RepeatLatentBatch(Node):
    DISPLAY_NAME = "Repeat Latent Batch"
    CATEGORY = "latent/batch"
    DESCRIPTION = ("Repeat the whole batch `amount` times (e.g. several variations of one img2img latent). Repeats "
                   "of items that carry batch indices get indices after the batch's own, so they get other noise.")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        samples: Link["LATENT"] = Field(description="the batch to repeat")
        amount: int = Field(1, ge=1, le=64, description="how many copies of the batch")

    def run(self, ctx: RunContext, samples, amount):
        def repeated(tensor):
            return tensor.repeat((amount,) + (1,) * (tensor.ndim - 1))

        mask = samples.noise_mask
        if mask is not None and mask.shape[0] > 1:
            # ComfyUI repeats the masks as they are, even when there are fewer masks than latents; the sampler then
            # cycles them over the batch.
            mask = repeated(mask)
        indices = samples.batch_index
        if indices is not None:
            offset = max(indices) - min(indices) + 1
            indices = tuple(indices) + tuple(i + copy * offset for copy in range(1, amount) for i in indices)
        return {"LATENT": samples.replace(samples=repeated(samples.samples), noise_mask=mask, batch_index=indices)}


class LatentComposite(Node):
    DISPLAY_NAME = "Latent Composite"
    CATEGORY = "latent"
    DESCRIPTION = ("Paste samples_from onto samples_to with its top-left corner at (x, y) pixels (in whole latent "
                   "cells: // 8); feather fades its inner edges in over that many pixels.")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        samples_to: Link["LATENT"] = Field(description="the latents to paste onto (their mask and indices are kept)")
        samples_from: Link["LATENT"] = Field(description="the latents to paste")
        x: int = pixel_step(0, 0, "left edge of the pasted latent, in pixels")
        y: int = pixel_step(0, 0, "top edge of the pasted latent, in pixels")
        feather: int = pixel_step(0, 0, "fade-in width at the pasted latent's edges inside samples_to, in pixels")

    def run(self, ctx: RunContext, samples_to, samples_from, x, y, feather):
        return {"LATENT": samples_to.replace(samples=composite(samples_to.samples, samples_from.samples,
                                                               x // LATENT_FACTOR, y // LATENT_FACTOR,
                                                               feather // LATENT_FACTOR))}


def composite(target: torch.Tensor, source: torch.Tensor, left: int, top: int, feather: int) -> torch.Tensor:
    """`source` pasted onto a copy of `target` at latent cell (left, top), cut to fit; with feather > 0 each edge of
    the pasted part that lies inside the target fades in over `feather` cells ((t + 1) / feather at the t-th)."""
    result = target.clone()
    height, width = target.shape[-2:]
    if left >= width or top >= height:
        return result  # nothing of the source lands on the target
    if source.shape[0] not in (1, target.shape[0]):
        raise ValueError(f"samples_from has {source.shape[0]} latents and samples_to {target.shape[0]}: "
                         "LatentComposite needs the same number, or one samples_from latent for all")
    part = source[..., : height - top, : width - left]
    rows, cols = part.shape[-2:]
    region = (..., slice(top, top + rows), slice(left, left + cols))
    if feather == 0:
        result[region] = part
        return result
    row_weights, col_weights = torch.ones(rows), torch.ones(cols)
    fades = ((row_weights, top != 0, top + rows < height), (col_weights, left != 0, left + cols < width))
    for weights, fade_start, fade_end in fades:
        for t in range(min(feather, len(weights))):
            if fade_start:
                weights[t] *= (t + 1) / feather
            if fade_end:
                weights[len(weights) - 1 - t] *= (t + 1) / feather
    mask = row_weights[:, None] * col_weights[None, :]
    result[region] = part * mask + target[region] * (1 - mask)
    return result


class SetLatentNoiseMask(Node):
    DISPLAY_NAME = "Set Latent Noise Mask"
    CATEGORY = "latent/inpaint"
    DESCRIPTION = ("Inpainting: a sampler changes the latent only where the mask is 1 (partly where it is between) "
                   "and keeps the rest exactly; the mask may have any resolution.")
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        samples: Link["LATENT"] = Field(description="the latents to inpaint, e.g. from VAEEncode")
        mask: Link["MASK"] = Field(description="1 = repaint, 0 = keep")

    def run(self, ctx: RunContext, samples, mask):
        return {"LATENT": samples.replace(noise_mask=mask.reshape((-1,) + tuple(mask.shape[-2:])).float())}


NODES = [EmptyLatent, EmptyLatentImage, LatentUpscale, LatentUpscaleBy, LatentFromBatch, RepeatLatentBatch,
         LatentComposite, SetLatentNoiseMask]
