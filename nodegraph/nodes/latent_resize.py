"""Resizing latents as ComfyUI's LatentUpscale nodes do (comfy.utils.common_upscale on latents): torch's
interpolation without antialiasing, or bislerp; never clamped (latents are not pixels in [0, 1]).

Everything but bislerp is the image nodes' resize (nodegraph.nodes.resize), unclamped: one rule for both.
"""

import torch
import torch.nn.functional as F

from nodegraph.nodes.resize import CROP_METHODS, crop_center_to_aspect, resize

INTERPOLATE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")
LATENT_UPSCALE_METHODS = INTERPOLATE_METHODS + ("bislerp",)  # ComfyUI's choices for latents, in its order


def resize_latent(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Latents [B, C, h, w] resized to height x width latent cells, after a centred crop to the new aspect ratio when
    crop is "center" ("disabled" stretches)."""
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize latents to {width}x{height} cells: each side needs at least one")
    if method not in LATENT_UPSCALE_METHODS:
        raise ValueError(f"upscale_method must be one of {', '.join(LATENT_UPSCALE_METHODS)}; got {method!r}")
    if method != "bislerp":
        return resize(samples, width, height, method, crop, clamp=False)
    if crop == "center":
        samples = crop_center_to_aspect(samples, width / height)
    elif crop != "disabled":
        raise ValueError(f"crop must be one of {', '.join(CROP_METHODS)}; got {crop!r}")
    return bislerp(samples, width, height)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize by slerping between the two nearest source cells, first along rows, then along columns.

    Each cell's channel vector is split into its direction (slerped) and its length (interpolated linearly), so
    latents keep their magnitude where plain bilinear averaging would shrink it. The two source cells and the weight
    of each output cell are bilinear's (half-cell centres, edges clamped)."""
    dtype = samples.dtype
    x = samples.float()
    x = _slerp_along(x, width, dim=3)
    x = _slerp_along(x, height, dim=2)
    return x.to(dtype)


def _slerp_along(x: torch.Tensor, new_length: int, dim: int) -> torch.Tensor:
    """x [B, C, H, W] resampled along `dim` (2 or 3) to new_length."""
    lower, upper, ratio = _bilinear_neighbours(x.shape[dim], new_length, x.device)
    a = x.index_select(dim, lower).movedim(1, -1)  # channels last: one vector per output cell
    b = x.index_select(dim, upper).movedim(1, -1)
    shape = [1, 1, 1, 1]
    shape[dim - 1] = new_length  # the resampled dimension, counted with channels moved to the end
    return _slerp(a, b, ratio.view(shape)).movedim(-1, 1)


def _bilinear_neighbours(old_length: int, new_length: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output position: the lower and the upper source index and the weight of the upper one, where
    bilinear interpolation (align_corners=False) puts them; the positions are found by interpolating the indices."""
    def resampled(values: torch.Tensor) -> torch.Tensor:
        return F.interpolate(values.view(1, 1, 1, -1), size=(1, new_length), mode="bilinear").view(-1)

    indices = torch.arange(old_length, dtype=torch.float32, device=device)
    position = resampled(indices)
    upper = indices + 1
    upper[-1] -= 1  # the last cell has no right neighbour: it is its own
    return position.long(), resampled(upper).long(), position - position.floor()


def _slerp(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    a_norm = a.norm(dim=-1, keepdim=True)
    b_norm = b.norm(dim=-1, keepdim=True)
    a_unit = torch.where(a_norm == 0, 0.0, a / a_norm)
    b_unit = torch.where(b_norm == 0, 0.0, b / b_norm)
    dot = (a_unit * b_unit).sum(-1, keepdim=True)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    result = (torch.sin((1 - ratio) * omega) / sin_omega) * a_unit + (torch.sin(ratio * omega) / sin_omega) * b_unit
    result = result * (a_norm * (1 - ratio) + b_norm * ratio)
    # Nearly the same direction: the first vector as it is; nearly opposite: a straight line between the two.
    result = torch.where(dot > 1 - 1e-5, a, result)
    return torch.where(dot < 1e-5 - 1, a * (1 - ratio) + b * ratio, result)
