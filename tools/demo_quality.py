"""How well the demo checkpoint draws what its prompts say: tests/test_demo.py's classifier and its 24 prompts, as a
module that the test, tools/sampler_survey.py and tools/sampler_grid.py share. It also sees what the demo LoRA and
the demo embedding teach (tests/test_demo_lora.py): rings, and the sunset.

    from tools.demo_quality import classify, generate, score   # from the repository root
"""

import colorsys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from nodegraph.nodes.loaders import BUILTIN_CHECKPOINTS
from nodegraph.sd import sample

DEMO = BUILTIN_CHECKPOINTS["demo-shapes.safetensors"]

# What a person calls each colour, as a hue in degrees; and the backgrounds as RGB. The classifier's own tables.
HUES = {"red": 0, "orange": 30, "yellow": 55, "green": 130, "cyan": 188, "blue": 228, "purple": 282, "pink": 325}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan"]
SHAPES = ["circle", "square", "triangle"]

# test_demo's 24 prompts: every colour with every shape, the backgrounds in turn; prompt i is sampled with seed i.
PROMPTS: list[tuple[str, str, str]] = [(colour, shape, list(BACKGROUNDS)[(i + j) % 3])
                                       for i, colour in enumerate(COLOURS) for j, shape in enumerate(SHAPES)]


def prompt_text(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def classify(image: np.ndarray) -> dict:
    """Background: nearest named colour to the border's median. Foreground: pixels far from it. Colour: the median
    hue of the saturated foreground. Shape: a ring where the middle of the foreground's bounding box is empty and
    foreground lies on all four sides of it; else how much of its bounding box the foreground fills (square ~1,
    circle ~0.79, triangle ~0.5)."""
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = min(BACKGROUNDS, key=lambda name: np.linalg.norm(background_rgb - BACKGROUNDS[name]))
    foreground = np.linalg.norm(pixels - background_rgb, axis=-1) > 60
    result = {"background": background, "colour": None, "shape": None, "foreground": foreground}
    if foreground.sum() < 16:
        return result
    hsv = np.array([colorsys.rgb_to_hsv(*(p / 255)) for p in pixels[foreground]])
    saturated = hsv[hsv[:, 1] > 0.35]
    if len(saturated):
        angles = saturated[:, 0] * 2 * np.pi  # a circular median: the hue nearest the mean direction
        mean = np.degrees(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360
        result["colour"] = min(HUES, key=lambda name: min(abs(HUES[name] - mean), 360 - abs(HUES[name] - mean)))
    ys, xs = np.nonzero(foreground)
    top, bottom = np.percentile(ys, [1, 99])
    left, right = np.percentile(xs, [1, 99])
    box = foreground[int(top):int(bottom) + 1, int(left):int(right) + 1]
    fill = box.mean()
    result["shape"] = ("ring" if has_hole(box) else "square" if fill > 0.9 else "circle" if fill > 0.66
                       else "triangle")
    return result


def centre(foreground: np.ndarray) -> tuple[float, float]:
    """Where the foreground is: its mean (x, y), as fractions of the picture's width and height."""
    ys, xs = np.nonzero(foreground)
    return float(xs.mean() / foreground.shape[1]), float(ys.mean() / foreground.shape[0])


def sees_sunset(seen: dict) -> bool:
    """Whether a classified picture shows what `embedding:demo-sunset` stands for (tools/train_demo_embedding.py):
    an orange circle low in the picture (its centre below 60% of the height) on a black background."""
    low = seen["foreground"].sum() >= 16 and centre(seen["foreground"])[1] > 0.6
    return (seen["colour"], seen["shape"], seen["background"]) == ("orange", "circle", "black") and low


def has_hole(box: np.ndarray) -> bool:
    """Whether a bounding box of foreground [h, w] is empty in its middle and closed around it: foreground to the
    left, right, top and bottom of the middle (a triangle's and a circle's middles are full)."""
    height, width = box.shape
    if min(height, width) < 6:
        return False
    cy, cx = height // 2, width // 2
    r = max(1, round(min(height, width) * 0.12))
    middle = box[cy - r:cy + r + 1, cx - r:cx + r + 1]
    row, column = box[cy], box[:, cx]
    return middle.mean() < 0.25 and all(side.any() for side in (row[:cx], row[cx:], column[:cy], column[cy:]))


def draw(colour_rgb, shape, background_rgb, size=64) -> np.ndarray:
    """A centred shape (or ring) as the classifier's reference (and an img2img starting picture)."""
    image = Image.new("RGB", (size, size), background_rgb)
    box = (size * 0.27, size * 0.27, size * 0.73, size * 0.73)
    canvas = ImageDraw.Draw(image)
    if shape in ("circle", "ring"):
        canvas.ellipse(box, fill=colour_rgb)
        if shape == "ring":  # a hole of half the diameter, as the demo LoRA learnt rings
            canvas.ellipse((size * 0.385, size * 0.385, size * 0.615, size * 0.615), fill=background_rgb)
    elif shape == "square":
        canvas.rectangle(box, fill=colour_rgb)
    else:
        canvas.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour_rgb)
    return np.asarray(image)


def to_pixels(sd, latent: torch.Tensor) -> np.ndarray:
    """Decode raw VAE latents [B, 4, h, w] to uint8 RGB pictures [B, H, W, 3]."""
    images = ((sd.vae.decode(latent) / 2 + 0.5).clamp(0, 1) * 255).round().byte()
    return images.permute(0, 2, 3, 1).cpu().numpy()


def generate(sd, prompt: str, seed: int, latent=None, denoise=1.0, steps=30, cfg=7.5, sampler_name=None,
             scheduler=None) -> np.ndarray:
    """One 64x64 picture as uint8 RGB [H, W, 3]. With neither sampler_name nor scheduler: our DDPM sampler (the
    default of test_demo and the seed workflows); with either, ComfyUI's KSampler."""
    latent = torch.zeros(1, 4, 8, 8) if latent is None else latent
    result = sample(sd, sd.encode_prompt([prompt]), sd.encode_prompt([""]), latent, seed=seed, steps=steps, cfg=cfg,
                    denoise=denoise, sampler_name=sampler_name, scheduler=scheduler)
    return to_pixels(sd, result)[0]


@dataclass
class Score:
    colour: float  # shares of the prompts read right, 0..1
    background: float
    shape: float
    seconds_per_image: float  # sampling and decoding, prompts encoded once beforehand
    misses: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return (self.colour + self.background + self.shape) / 3


def score(sd, steps=30, cfg=7.5, sampler_name=None, scheduler=None, prompts=PROMPTS) -> Score:
    """test_demo's measurement: prompt i with seed i, each picture classified; and the time per picture."""
    negative = sd.encode_prompt([""])
    encoded = [sd.encode_prompt([prompt_text(*p)]) for p in prompts]
    right = {"colour": 0, "background": 0, "shape": 0}
    misses, seconds = [], 0.0
    for seed, ((colour, shape, background), positive) in enumerate(zip(prompts, encoded)):
        start = time.perf_counter()
        result = sample(sd, positive, negative, torch.zeros(1, 4, 8, 8), seed=seed, steps=steps, cfg=cfg,
                        sampler_name=sampler_name, scheduler=scheduler)
        pixels = to_pixels(sd, result)[0]
        seconds += time.perf_counter() - start
        seen = classify(pixels)
        for key, want in (("colour", colour), ("background", background), ("shape", shape)):
            right[key] += seen[key] == want
            if seen[key] != want:
                misses.append(f"{colour} {shape} on {background}: {key} read as {seen[key]}")
    n = len(prompts)
    return Score(right["colour"] / n, right["background"] / n, right["shape"] / n, seconds / n, misses)
