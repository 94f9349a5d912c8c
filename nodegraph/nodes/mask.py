"""ComfyUI's mask nodes (its comfy_extras/nodes_mask.py): converting between MASK and IMAGE, making, inverting,
cropping, combining, feathering, growing and thresholding masks, and compositing one image onto another.

A MASK is float32 [B, H, W] in [0, 1]; 1 marks the region to change (inpainting repaints it). Nodes accept any
[..., H, W] mask and treat it as a batch, as ComfyUI's do.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from nodegraph.nodes import Link, Node, NodeInputs, RunContext
from nodegraph.nodes.image import save_preview
from nodegraph.nodes.pixels import image_channel, mask_batch, mask_to_image, repeat_to_batch
from nodegraph.nodes.resize import MAX_RESOLUTION

OPTIONAL = {"optional": True}


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None = None,
              multiplier: int = 1, resize_source: bool = False) -> torch.Tensor:
    """`source` [B, C, h, w] pasted onto a copy of `destination` [B, C, H, W] with its top left corner at (x, y)
    (in units of `multiplier` pixels: 8 for latents), as ComfyUI composites: blended by `mask` (bilinearly resized to
    the source; absent: fully opaque), source and mask batches repeated or cut to the destination's, the part past
    the destination's edges dropped. resize_source first stretches the source to the destination's size."""
    if x < 0 or y < 0:
        raise ValueError(f"the paste position must not be negative, got x={x}, y={y}")
    destination = destination.clone()
    if resize_source:
        source = F.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    x = min(x, destination.shape[-1] * multiplier)
    y = min(y, destination.shape[-2] * multiplier)
    left, top = x // multiplier, y // multiplier
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = F.interpolate(mask_batch(mask).unsqueeze(1).float(), size=source.shape[-2:], mode="bilinear")
        mask = repeat_to_batch(mask, source.shape[0])
    visible_height, visible_width = destination.shape[-2] - top, destination.shape[-1] - left
    source = source[..., :visible_height, :visible_width]
    mask = mask[..., :visible_height, :visible_width]
    bottom, right = top + source.shape[-2], left + source.shape[-1]
    region = destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = mask * source + (1.0 - mask) * region
    return destination


class ImageCompositeMasked(Node):
    CATEGORY = "image"
    DESCRIPTION = ("Paste source onto destination with its top left corner at (x, y), blended by the mask (1 = "
                   "source; no mask: all source). resize_source stretches the source to the destination's size.")
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        destination: Link["IMAGE"] = Field(description="the images to paste onto")
        source: Link["IMAGE"] = Field(description="the images to paste")
        x: int = Field(0, ge=0, le=MAX_RESOLUTION, description="left edge of the pasted image")
        y: int = Field(0, ge=0, le=MAX_RESOLUTION, description="top edge of the pasted image")
        resize_source: bool = Field(False, description="stretch the source to the destination's size first")
        mask: Link["MASK"] = Field(None, description="where the source shows (1) and where the destination stays (0)",
                                   json_schema_extra=OPTIONAL)

    def run(self, ctx: RunContext, destination, source, x, y, resize_source, mask=None):
        return {"IMAGE": composite(destination, source, x, y, mask, 1, resize_source)}


class MaskToImage(Node):
    DISPLAY_NAME = "Convert Mask to Image"
    CATEGORY = "mask"
    DESCRIPTION = "Turn masks into grey images (the mask value in red, green and blue)."
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        mask: Link["MASK"] = Field(description="the masks to show as images")

    def run(self, ctx: RunContext, mask):
        return {"IMAGE": mask_to_image(mask)}


class ImageToMask(Node):
    DISPLAY_NAME = "Convert Image to Mask"
    CATEGORY = "mask"
    DESCRIPTION = ("One colour channel of images as masks. IMAGE carries no alpha: a file's transparency is "
                   "LoadImage's MASK output.")
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to take the channel from")
        channel: Literal["red", "green", "blue", "alpha"] = Field("red", description="which channel is the mask")

    def run(self, ctx: RunContext, image, channel):
        return {"MASK": image_channel(image, channel)}


class ImageColorToMask(Node):
    CATEGORY = "mask"
    DESCRIPTION = ("A mask that is 1 where the image has exactly the given colour (0xRRGGBB, compared in 8-bit "
                   "values rounded from the image) and 0 elsewhere.")
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to look for the colour in")
        color: int = Field(0, ge=0, le=0xFFFFFF, description="the colour as an integer 0xRRGGBB")

    def run(self, ctx: RunContext, image, color):
        values = (image.clamp(0, 1) * 255.0).round().to(torch.int64)
        packed = (values[:, 0] << 16) + (values[:, 1] << 8) + values[:, 2]
        return {"MASK": (packed == color).float()}


class SolidMask(Node):
    CATEGORY = "mask"
    DESCRIPTION = "A mask of one size with the same value everywhere."
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        value: float = Field(1.0, ge=0.0, le=1.0, description="the mask value")
        width: int = Field(512, ge=1, le=MAX_RESOLUTION, description="width in pixels")
        height: int = Field(512, ge=1, le=MAX_RESOLUTION, description="height in pixels")

    def run(self, ctx: RunContext, value, width, height):
        return {"MASK": torch.full((1, height, width), value, dtype=torch.float32)}


class InvertMask(Node):
    CATEGORY = "mask"
    DESCRIPTION = "Swap masked and unmasked: each value becomes 1 - value."
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        mask: Link["MASK"] = Field(description="the masks to invert")

    def run(self, ctx: RunContext, mask):
        return {"MASK": 1.0 - mask}


class CropMask(Node):
    CATEGORY = "mask"
    DESCRIPTION = "Cut a width x height region whose top left corner is (x, y); it ends at the mask's edges."
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        mask: Link["MASK"] = Field(description="the masks to crop")
        x: int = Field(0, ge=0, le=MAX_RESOLUTION, description="left edge of the region")
        y: int = Field(0, ge=0, le=MAX_RESOLUTION, description="top edge of the region")
        width: int = Field(512, ge=1, le=MAX_RESOLUTION, description="region width in pixels")
        height: int = Field(512, ge=1, le=MAX_RESOLUTION, description="region height in pixels")

    def run(self, ctx: RunContext, mask, x, y, width, height):
        masks = mask_batch(mask)
        if x >= masks.shape[-1] or y >= masks.shape[-2]:
            raise ValueError(f"the region at x={x}, y={y} starts outside the {masks.shape[-1]}x{masks.shape[-2]} mask")
        return {"MASK": masks[:, y : y + height, x : x + width].clone()}


MASK_OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")


def combine_masks(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str) -> torch.Tensor:
    """ComfyUI's MaskComposite: `source` combined into `destination` where it lands (top left at x, y), then the
    whole result clamped to [0, 1]. and / or / xor work on masks rounded to 0 or 1."""
    output = mask_batch(destination).float().clone()
    source = mask_batch(source).float()
    right, bottom = min(x + source.shape[-1], output.shape[-1]), min(y + source.shape[-2], output.shape[-2])
    if right > x and bottom > y:  # else the source lands past the destination's edges: nothing to combine
        part = source[:, : bottom - y, : right - x]
        under = output[:, y:bottom, x:right]
        if part.shape[0] not in (1, under.shape[0]):
            raise ValueError(f"cannot combine a batch of {part.shape[0]} source masks into {under.shape[0]}")
        if operation == "multiply":
            combined = under * part
        elif operation == "add":
            combined = under + part
        elif operation == "subtract":
            combined = under - part
        elif operation in ("and", "or", "xor"):
            logic = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[operation]
            combined = logic(under.round().bool(), part.round().bool()).float()
        else:
            raise ValueError(f"operation must be one of {', '.join(MASK_OPERATIONS)}; got {operation!r}")
        output[:, y:bottom, x:right] = combined
    return output.clamp(0.0, 1.0)


class MaskComposite(Node):
    CATEGORY = "mask"
    DESCRIPTION = ("Combine source into destination where it lands (top left at x, y): multiply, add, subtract, "
                   "or the logical and / or / xor of the masks rounded to 0 and 1; the result is clamped to [0, 1].")
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        destination: Link["MASK"] = Field(description="the masks to combine into")
        source: Link["MASK"] = Field(description="the masks to combine")
        x: int = Field(0, ge=0, le=MAX_RESOLUTION, description="left edge of the source")
        y: int = Field(0, ge=0, le=MAX_RESOLUTION, description="top edge of the source")
        operation: Literal[MASK_OPERATIONS] = Field("multiply", description="how the values combine")

    def run(self, ctx: RunContext, destination, source, x, y, operation):
        return {"MASK": combine_masks(destination, source, x, y, operation)}


def feather(mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """ComfyUI's FeatherMask: the outermost `left` columns are multiplied by 1/left, 2/left, ... 1 going inwards,
    and likewise from the right, top and bottom edges (where two edges' ramps meet, both apply)."""
    output = mask_batch(mask).float().clone()
    height, width = output.shape[-2:]
    left, right, top, bottom = min(left, width), min(right, width), min(top, height), min(bottom, height)

    def ramp(length: int) -> torch.Tensor:  # 1/length ... length/length, the outermost first
        return (torch.arange(1, length + 1, dtype=torch.float64) / length).float()

    if left:
        output[:, :, :left] *= ramp(left)
    if right:
        output[:, :, width - right :] *= ramp(right).flip(0)
    if top:
        output[:, :top, :] *= ramp(top)[:, None]
    if bottom:
        output[:, height - bottom :, :] *= ramp(bottom).flip(0)[:, None]
    return output


class FeatherMask(Node):
    CATEGORY = "mask"
    DESCRIPTION = "Fade masks out linearly towards the chosen edges, over the given number of pixels."
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        mask: Link["MASK"] = Field(description="the masks to feather")
        left: int = Field(0, ge=0, le=MAX_RESOLUTION, description="fade width at the left edge")
        top: int = Field(0, ge=0, le=MAX_RESOLUTION, description="fade width at the top edge")
        right: int = Field(0, ge=0, le=MAX_RESOLUTION, description="fade width at the right edge")
        bottom: int = Field(0, ge=0, le=MAX_RESOLUTION, description="fade width at the bottom edge")

    def run(self, ctx: RunContext, mask, left, top, right, bottom):
        return {"MASK": feather(mask, left, top, right, bottom)}


def grow(mask: torch.Tensor, expand: int, tapered_corners: bool) -> torch.Tensor:
    """ComfyUI's GrowMask: |expand| rounds of greyscale dilation (expand > 0) or erosion (< 0) over each pixel's
    3x3 neighbourhood within the mask; tapered_corners leaves the diagonal neighbours out (a plus-shaped step)."""
    masks = mask_batch(mask).float().unsqueeze(1)
    height, width = masks.shape[-2:]
    offsets = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    if not tapered_corners:
        offsets += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    outside = float("-inf") if expand > 0 else float("inf")  # pixels past the edge never win
    for _ in range(abs(expand)):
        padded = F.pad(masks, (1, 1, 1, 1), value=outside)
        neighbours = torch.stack([padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
                                  for dy, dx in offsets])
        masks = neighbours.amax(dim=0) if expand > 0 else neighbours.amin(dim=0)
    return masks.squeeze(1)


class GrowMask(Node):
    DISPLAY_NAME = "Grow Mask"
    CATEGORY = "mask"
    DESCRIPTION = "Grow masks by `expand` pixels (shrink them when negative)."
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        mask: Link["MASK"] = Field(description="the masks to grow or shrink")
        expand: int = Field(0, ge=-MAX_RESOLUTION, le=MAX_RESOLUTION, description="pixels to grow (negative: shrink)")
        tapered_corners: bool = Field(True, description="grow in a rounded shape instead of a square one")

    def run(self, ctx: RunContext, mask, expand, tapered_corners):
        return {"MASK": grow(mask, expand, tapered_corners)}


class ThresholdMask(Node):
    CATEGORY = "mask"
    DESCRIPTION = "1 where the mask is above the value, 0 elsewhere."
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        mask: Link["MASK"] = Field(description="the masks to threshold")
        value: float = Field(0.5, ge=0.0, le=1.0, description="values above this become 1")

    def run(self, ctx: RunContext, mask, value):
        return {"MASK": (mask > value).float()}


class MaskPreview(Node):
    DISPLAY_NAME = "Preview Mask"
    CATEGORY = "mask"
    DESCRIPTION = "Show masks as grey pictures without keeping them (written to the temporary folder)."
    OUTPUT_NODE = True
    OUTPUTS = {}

    class Inputs(NodeInputs):
        mask: Link["MASK"] = Field(description="the masks to show")

    def run(self, ctx: RunContext, mask):
        return save_preview(ctx, mask_to_image(mask))


NODES = [MaskToImage, ImageToMask, ImageColorToMask, SolidMask, InvertMask, CropMask, MaskComposite, FeatherMask,
         GrowMask, ThresholdMask, ImageCompositeMasked, MaskPreview]
