"""How the parity tests compare results, and the diffusers pieces several of them build."""

import math

import numpy as np
import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64."""
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 pictures, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """diffusers' postprocessing: [-1,1] -> [0,255], as HWC uint8."""
    return ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def sd_scheduler():
    """diffusers' DDPMScheduler as SD 1.x ships it."""
    from diffusers import DDPMScheduler
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         steps_offset=1, timestep_spacing="leading")


def comfy_add_twin(conds: list, c: dict, carried: str) -> None:
    """ComfyUI's samplers.py create_cond_with_same_area_if_none, transcribed for the tests: an area cond on one side of
    CFG gets a twin over the same area among the other side's `conds`, carrying `carried` (the text, or the model
    conds) of the smallest cond there that contains the area."""
    if "area" not in c:
        return
    h, w, y, x = c["area"]
    smallest = None
    for other in conds:
        if "area" in other:
            oh, ow, oy, ox = other["area"]
            if y >= oy and x >= ox and y + h <= oy + oh and x + w <= ox + ow:
                if smallest is None or "area" not in smallest or math.prod(smallest["area"][:2]) > oh * ow:
                    smallest = other
        elif smallest is None:
            smallest = other
    if smallest is None or smallest.get("area") == c["area"]:
        return
    conds.append({**c, carried: smallest[carried]})
