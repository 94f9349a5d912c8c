"""Operations on IMAGE: scaling (ours and ComfyUI's), padding for outpainting, inverting, batching, cropping.

Every node that resizes calls nodegraph.nodes.resize.resize, ComfyUI's resampling; sizes follow ComfyUI's rounding.
"""

from typing import Literal

import torch
from pydantic import Field

from nodegraph.nodes import Link, Node, NodeInputs, RunContext
from nodegraph.nodes.resize import (MAX_RESOLUTION, UPSCALE_METHODS, resize, size_for_megapixels,
                                    size_keeping_aspect, size_scaled_by)

UpscaleMethod = Literal[UPSCALE_METHODS]
Crop = Literal["disabled", "center"]
OUTPAINT_FILL = 0.5  # the grey ComfyUI puts in the new border


class ImageScale(Node):
    COMFY_TYPE = None  # ComfyUI's ImageScale takes (image, upscale_method, width, height, crop): ComfyUI.ImageScale
    NATIVE = True
    CATEGORY = "image"
    DESCRIPTION = ("Resize images, e.g. to bring an img2img input to the size to generate at. "
                   "crop 'center' keeps the aspect ratio by cutting the overhang; 'disabled' stretches. "
                   "Unlike ComfyUI's ImageScale, bilinear and bicubic antialias when shrinking.")
    OUTPUTS = {"image": "IMAGE"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to resize")
        width: int = Field(512, ge=1, le=8192, description="new width in pixels")
        height: int = Field(512, ge=1, le=8192, description="new height in pixels")
        method: Literal["bilinear", "bicubic", "area", "nearest-exact"] = Field(
            "bilinear", description="resampling filter (bilinear and bicubic antialias when shrinking)")
        crop: Crop = Field("disabled", description="'center': keep the aspect ratio")

    def run(self, ctx: RunContext, image, width, height, method, crop):
        return {"image": resize(image, width, height, method, crop, antialias=True)}


class ComfyImageScale(Node):
    TYPE = "ComfyUI.ImageScale"
    COMFY_TYPE = "ImageScale"
    DISPLAY_NAME = "Upscale Image"
    CATEGORY = "image/upscaling"
    DESCRIPTION = ("Resize images to width x height as ComfyUI does (no antialiasing). A size of 0 follows the "
                   "other side's scale (both 0: unchanged); crop 'center' keeps the aspect ratio.")
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to resize")
        upscale_method: UpscaleMethod = Field("nearest-exact", description="resampling filter")
        width: int = Field(512, ge=0, le=MAX_RESOLUTION, description="new width in pixels; 0 keeps the aspect ratio")
        height: int = Field(512, ge=0, le=MAX_RESOLUTION, description="new height in pixels; 0 keeps the aspect ratio")
        crop: Crop = Field("disabled", description="'center': cut the overhang instead of stretching")

    def run(self, ctx: RunContext, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return {"IMAGE": image}
        width, height = size_keeping_aspect(width, height, image.shape[-1], image.shape[-2])
        return {"IMAGE": resize(image, width, height, upscale_method, crop)}


class ImageScaleBy(Node):
    DISPLAY_NAME = "Upscale Image By"
    CATEGORY = "image/upscaling"
    DESCRIPTION = "Resize images by a factor (each side times scale_by, rounded)."
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to resize")
        upscale_method: UpscaleMethod = Field("nearest-exact", description="resampling filter")
        scale_by: float = Field(1.0, ge=0.01, le=8.0, description="factor for both sides")

    def run(self, ctx: RunContext, image, upscale_method, scale_by):
        width, height = size_scaled_by(scale_by, image.shape[-1], image.shape[-2])
        _check_size(width, height, image, f"scale_by {scale_by}")
        return {"IMAGE": resize(image, width, height, upscale_method)}


class ImageScaleToTotalPixels(Node):
    DISPLAY_NAME = "Scale Image to Total Pixels"
    CATEGORY = "image/upscaling"
    DESCRIPTION = "Resize images to about megapixels x 1024 x 1024 pixels, keeping the aspect ratio."
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to resize")
        upscale_method: UpscaleMethod = Field("nearest-exact", description="resampling filter")
        megapixels: float = Field(1.0, ge=0.01, le=16.0, description="target size in units of 1024 x 1024 pixels")

    def run(self, ctx: RunContext, image, upscale_method, megapixels):
        width, height = size_for_megapixels(megapixels, image.shape[-1], image.shape[-2])
        _check_size(width, height, image, f"megapixels {megapixels}")
        return {"IMAGE": resize(image, width, height, upscale_method)}


def _check_size(width: int, height: int, image: torch.Tensor, reason: str) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"{reason} makes the {image.shape[-1]}x{image.shape[-2]} image {width}x{height}: "
                         "each side needs at least 1 pixel")


def pad_for_outpaint(image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's ImagePadForOutpaint: the image on a grey (0.5) canvas grown by the given borders, and a MASK
    [1, H, W] that is 1 on the new border and, inside the old picture, rises as ((feathering - d) / feathering)^2
    towards each padded side (d = distance in pixels from that side; the top and left rows count as d = 0, the
    bottom and right ones as d = 1). No feathering when it is 0 or at least half the picture's height or width."""
    batch, channels, height, width = image.shape
    canvas = torch.full((batch, channels, height + top + bottom, width + left + right), OUTPAINT_FILL)
    canvas[..., top : top + height, left : left + width] = image
    mask = torch.ones(height + top + bottom, width + left + right)
    inner = torch.zeros(height, width)
    if 0 < feathering and feathering * 2 < height and feathering * 2 < width:
        rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
        columns = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
        far_rows, far_columns = torch.full_like(rows, height), torch.full_like(columns, width)
        distance = torch.stack([
            rows if top else far_rows, height - rows if bottom else far_rows,
            columns if left else far_columns, width - columns if right else far_columns,
        ]).amin(dim=0)
        ramp = (feathering - distance) / feathering
        inner = torch.where(distance < feathering, ramp * ramp, 0.0).float()
    mask[top : top + height, left : left + width] = inner
    return canvas, mask.unsqueeze(0)


class ImagePadForOutpaint(Node):
    DISPLAY_NAME = "Pad Image for Outpainting"
    CATEGORY = "image"
    DESCRIPTION = ("Grow the canvas for outpainting: the new border is grey and masked (1); the mask fades into the "
                   "picture over `feathering` pixels along the padded sides.")
    OUTPUTS = {"IMAGE": "IMAGE", "MASK": "MASK"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to extend")
        left: int = Field(0, ge=0, le=MAX_RESOLUTION, description="pixels to add on the left")
        top: int = Field(0, ge=0, le=MAX_RESOLUTION, description="pixels to add at the top")
        right: int = Field(0, ge=0, le=MAX_RESOLUTION, description="pixels to add on the right")
        bottom: int = Field(0, ge=0, le=MAX_RESOLUTION, description="pixels to add at the bottom")
        feathering: int = Field(40, ge=0, le=MAX_RESOLUTION, description="how far the mask fades into the picture")

    def run(self, ctx: RunContext, image, left, top, right, bottom, feathering):
        canvas, mask = pad_for_outpaint(image, left, top, right, bottom, feathering)
        return {"IMAGE": canvas, "MASK": mask}


class ImageInvert(Node):
    DISPLAY_NAME = "Invert Image"
    CATEGORY = "image"
    DESCRIPTION = "Invert the colours: each value becomes 1 - value."
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to invert")

    def run(self, ctx: RunContext, image):
        return {"IMAGE": 1.0 - image}


class ImageBatch(Node):
    DISPLAY_NAME = "Batch Images"
    CATEGORY = "image"
    DESCRIPTION = ("Join two image batches into one, image1's first. image2 is resized to image1's size first "
                   "(bilinear, centre-cropped to keep its aspect ratio) when the sizes differ.")
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        image1: Link["IMAGE"] = Field(description="the first images")
        image2: Link["IMAGE"] = Field(description="the images to append")

    def run(self, ctx: RunContext, image1, image2):
        if image1.shape[-2:] != image2.shape[-2:]:
            image2 = resize(image2, image1.shape[-1], image1.shape[-2], "bilinear", "center")
        return {"IMAGE": torch.cat((image1, image2), dim=0)}


class ImageCrop(Node):
    DISPLAY_NAME = "Image Crop"
    CATEGORY = "image/transform"
    DESCRIPTION = ("Cut a width x height region whose top left corner is (x, y); x and y stop at the last column "
                   "and row, and a region reaching past the edge is cut short there.")
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to crop")
        width: int = Field(512, ge=1, le=MAX_RESOLUTION, description="region width in pixels")
        height: int = Field(512, ge=1, le=MAX_RESOLUTION, description="region height in pixels")
        x: int = Field(0, ge=0, le=MAX_RESOLUTION, description="left edge of the region")
        y: int = Field(0, ge=0, le=MAX_RESOLUTION, description="top edge of the region")

    def run(self, ctx: RunContext, image, width, height, x, y):
        x, y = min(x, image.shape[-1] - 1), min(y, image.shape[-2] - 1)
        return {"IMAGE": image[..., y : y + height, x : x + width].clone()}


NODES = [ImageScale, ComfyImageScale, ImageScaleBy, ImageScaleToTotalPixels, ImagePadForOutpaint, ImageInvert,
         ImageBatch, ImageCrop]
