"""What travels on IMAGE and MASK sockets, and the conversions the image and mask nodes share.

IMAGE is float32 [B, 3, H, W] in [0, 1], channels first (ComfyUI's is [B, H, W, C]); MASK is float32 [B, H, W] in
[0, 1], where 1 marks the region to change. Everything here works on those shapes.
"""

import numpy as np
import torch
from PIL import Image

RGB_CHANNELS = ("red", "green", "blue")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image -> IMAGE [1, 3, H, W] float32 in [0, 1] (value / 255, as ComfyUI loads)."""
    pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def channel_to_mask(image: Image.Image, band: str) -> torch.Tensor:
    """One band ("R", "G", "B" or "A") of a PIL image -> [H, W] float32 in [0, 1]."""
    values = np.asarray(image.getchannel(band), dtype=np.uint8).astype(np.float32) / 255.0
    return torch.from_numpy(values)


def to_uint8(images: torch.Tensor, rounding: str = "truncate") -> torch.Tensor:
    """IMAGE [B, C, H, W] (or MASK [B, H, W]) -> uint8 channels-last [B, H, W, C] (or [B, H, W]).

    "truncate" is ComfyUI's quantization (clip(255 * x, 0, 255) cast to uint8, so 0.999 becomes 254); "nearest"
    rounds, as diffusers and our own SaveImage do.
    """
    scaled = torch.nan_to_num(images.detach().float().cpu(), nan=0.0) * 255.0
    if rounding == "nearest":
        scaled = scaled.round()
    elif rounding != "truncate":
        raise ValueError(f"rounding must be 'truncate' or 'nearest', not {rounding!r}")
    pixels = scaled.clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1) if pixels.ndim == 4 else pixels


def to_pil(images: torch.Tensor, rounding: str = "nearest") -> list[Image.Image]:
    """IMAGE [B, 3, H, W] -> B RGB PIL images (MASK [B, H, W] -> B greyscale ones), quantized by `rounding`."""
    pixels = to_uint8(images, rounding)
    mode = "RGB" if pixels.ndim == 4 else "L"
    return [Image.fromarray(frame.contiguous().numpy(), mode) for frame in pixels]


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> [3, H, W] float32, or uint8 [H, W] -> [H, W] float32, both / 255."""
    values = torch.from_numpy(np.ascontiguousarray(pixels).astype(np.float32) / 255.0)
    return values.permute(2, 0, 1) if values.ndim == 3 else values


# --- masks ----------------------------------------------------------------------------------------------------------


def mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """Any [..., H, W] mask as a batch [B, H, W] (ComfyUI's nodes reshape every mask this way)."""
    if mask.ndim < 2:
        raise ValueError(f"a MASK needs at least 2 dimensions [H, W], got shape {tuple(mask.shape)}")
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    """MASK -> IMAGE: each mask as a grey picture (the same value in red, green and blue)."""
    return mask_batch(mask).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def image_channel(image: torch.Tensor, channel: str) -> torch.Tensor:
    """One colour channel of IMAGE [B, 3, H, W] by name -> MASK [B, H, W]."""
    if channel == "alpha":
        # ComfyUI's images may carry alpha as a fourth channel; ours are RGB, and a loaded file's transparency
        # arrives on LoadImage's MASK output instead (as 1 - alpha).
        raise ValueError("IMAGE sockets carry red, green and blue only: for an image file's transparency use "
                         "LoadImage's MASK output (1 - alpha) or LoadImageMask with channel 'alpha'")
    if channel not in RGB_CHANNELS:
        raise ValueError(f"channel must be one of {', '.join(RGB_CHANNELS)}, 'alpha'; got {channel!r}")
    return image[:, RGB_CHANNELS.index(channel)].clone()


def repeat_to_batch(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The first `batch_size` items of `tensor`, repeating the batch as often as needed (ComfyUI's rule)."""
    if tensor.shape[0] >= batch_size:
        return tensor[:batch_size]
    repeats = -(-batch_size // tensor.shape[0])
    return tensor.repeat(repeats, *([1] * (tensor.ndim - 1)))[:batch_size]
