"""Resizing images and masks, as ComfyUI resizes them (its comfy.utils.common_upscale), for every node that scales.

One function, `resize`, serves our ImageScale and ComfyUI's ImageScale, ImageScaleBy, ImageScaleToTotalPixels and
ImageBatch. ComfyUI's nodes never antialias: shrinking with bilinear or bicubic samples the source sparsely (and
aliases, as it does in ComfyUI). Our own ImageScale asks for antialiasing when it shrinks.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nodegraph.nodes.pixels import from_uint8, to_uint8

# ComfyUI's order: the first is the default
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")
MAX_RESOLUTION = 16384  # ComfyUI's bound on every pixel size


def resize(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled",
           antialias: bool = False, clamp: bool = True) -> torch.Tensor:
    """Images [B, C, H, W] (or masks [B, H, W]) resized to width x height.

    crop "center" first cuts the largest centred region with the target's aspect ratio (ComfyUI's rounding), so the
    picture is not stretched; "disabled" stretches. lanczos goes through 8-bit PIL images (quantized by truncation,
    as ComfyUI does), the other methods are torch's interpolation. The result is clamped to [0, 1] (bicubic and
    lanczos overshoot near edges) unless clamp is False: latents are no pixels.
    """
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}: both sides need at least 1 pixel")
    if method not in UPSCALE_METHODS:
        raise ValueError(f"upscale method must be one of {', '.join(UPSCALE_METHODS)}; got {method!r}")
    is_mask = samples.ndim == 3
    batch = samples.unsqueeze(1) if is_mask else samples
    if crop == "center":
        batch = crop_center_to_aspect(batch, width / height)
    elif crop != "disabled":
        raise ValueError(f"crop must be one of {', '.join(CROP_METHODS)}; got {crop!r}")
    if method == "lanczos":
        resized = lanczos(batch, width, height)
    else:
        smooth = antialias and method in ("bilinear", "bicubic")  # the other modes take no antialias flag
        resized = F.interpolate(batch.float(), size=(height, width), mode=method, antialias=smooth)
    if clamp:
        resized = resized.clamp(0.0, 1.0)
    return resized.squeeze(1) if is_mask else resized


def crop_center_to_aspect(samples: torch.Tensor, aspect: float) -> torch.Tensor:
    """The centred region of [..., H, W] whose width / height is `aspect`, cut as ComfyUI cuts it: an equal,
    rounded margin on both sides of the overlong dimension."""
    height, width = samples.shape[-2:]
    old_aspect = width / height
    x = y = 0
    if old_aspect > aspect:
        x = round((width - width * (aspect / old_aspect)) / 2)
    elif old_aspect < aspect:
        y = round((height - height * (old_aspect / aspect)) / 2)
    return samples[..., y : height - y, x : width - x]


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[B, C, H, W] resized with PIL's Lanczos filter; C is 1 (a greyscale picture) or 3. 8-bit in between."""
    channels = samples.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"lanczos resizes 1- or 3-channel pictures, not {channels}")
    frames = to_uint8(samples[:, 0] if channels == 1 else samples, "truncate")
    mode = "L" if channels == 1 else "RGB"
    resized = [Image.fromarray(frame.numpy(), mode).resize((width, height), Image.Resampling.LANCZOS)
               for frame in frames]
    result = torch.stack([from_uint8(np.asarray(image)) for image in resized])
    return (result.unsqueeze(1) if channels == 1 else result).to(samples.dtype)


def size_keeping_aspect(width: int, height: int, old_width: int, old_height: int) -> tuple[int, int]:
    """ComfyUI's ImageScale sizes: a 0 side follows the other one's scale (both 0: unchanged)."""
    if width == 0 and height == 0:
        return old_width, old_height
    if width == 0:
        width = max(1, round(old_width * height / old_height))
    elif height == 0:
        height = max(1, round(old_height * width / old_width))
    return width, height


def size_scaled_by(scale: float, old_width: int, old_height: int) -> tuple[int, int]:
    """ComfyUI's ImageScaleBy sizes: each side times `scale`, rounded."""
    return round(old_width * scale), round(old_height * scale)


def size_for_megapixels(megapixels: float, old_width: int, old_height: int) -> tuple[int, int]:
    """ComfyUI's ImageScaleToTotalPixels sizes: about `megapixels` * 1024 * 1024 pixels, keeping the aspect ratio."""
    total = int(megapixels * 1024 * 1024)
    scale = math.sqrt(total / (old_width * old_height))
    return round(old_width * scale), round(old_height * scale)
