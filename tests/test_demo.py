"""The embedded demo checkpoint draws what its prompts say, judged by a simple measurable classifier of our own."""

import colorsys
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from nodegraph.nodes import Environment
from nodegraph.nodes.loaders import BUILTIN_CHECKPOINTS, checkpoint_names
from nodegraph.sd import load_checkpoint, sample

DEMO = BUILTIN_CHECKPOINTS["demo-shapes.safetensors"]
ROOT = Path(__file__).resolve().parent.parent

# What a person calls each colour, as a hue in degrees; and the backgrounds as RGB. The classifier's own tables.
HUES = {"red": 0, "orange": 30, "yellow": 55, "green": 130, "cyan": 188, "blue": 228, "purple": 282, "pink": 325}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan"]
SHAPES = ["circle", "square", "triangle"]


def classify(image: np.ndarray) -> dict:
    """Background: nearest named colour to the border's median. Foreground: pixels far from it. Colour: the median
    hue of the saturated foreground. Shape: how much of its bounding box the foreground fills (square ~1,
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
    result["shape"] = "square" if fill > 0.9 else "circle" if fill > 0.66 else "triangle"
    return result


def draw(colour_rgb, shape, background_rgb, size=64) -> np.ndarray:
    image = Image.new("RGB", (size, size), background_rgb)
    box = (size * 0.27, size * 0.27, size * 0.73, size * 0.73)
    canvas = ImageDraw.Draw(image)
    if shape == "circle":
        canvas.ellipse(box, fill=colour_rgb)
    elif shape == "square":
        canvas.rectangle(box, fill=colour_rgb)
    else:
        canvas.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour_rgb)
    return np.asarray(image)


def test_the_classifier_reads_drawn_shapes_right():
    for colour, rgb in (("red", (220, 30, 30)), ("blue", (30, 60, 220)), ("yellow", (240, 220, 30))):
        for shape in SHAPES:
            for background in BACKGROUNDS:
                seen = classify(draw(rgb, shape, BACKGROUNDS[background]))
                assert (seen["colour"], seen["shape"], seen["background"]) == (colour, shape, background)


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO, device="cpu", dtype=torch.float32)


def generate(sd, prompt: str, seed: int, latent=None, denoise=1.0, steps=30, cfg=7.5) -> np.ndarray:
    latent = torch.zeros(1, 4, 8, 8) if latent is None else latent
    result = sample(sd, sd.encode_prompt([prompt]), sd.encode_prompt([""]), latent, seed=seed, steps=steps, cfg=cfg,
                    denoise=denoise)
    image = ((sd.vae.decode(result)[0] / 2 + 0.5).clamp(0, 1) * 255).round().byte()
    return image.permute(1, 2, 0).numpy()


def test_demo_is_small_fp16_and_offered_with_an_empty_models_folder(tmp_path):
    assert DEMO.stat().st_size < 30 * 2**20
    from safetensors import safe_open
    with safe_open(DEMO, framework="pt") as file:
        assert {file.get_slice(k).get_dtype() for k in file.keys()} <= {"F16", "I64"}
    assert "demo-shapes.safetensors" in checkpoint_names(Environment(models_dir=tmp_path / "empty"))


def test_generated_images_show_the_prompted_colour_background_and_shape(demo):
    prompts = [(colour, shape, list(BACKGROUNDS)[(i + j) % 3])
               for i, colour in enumerate(COLOURS) for j, shape in enumerate(SHAPES)]
    assert len(prompts) >= 24
    right = {"colour": 0, "background": 0, "shape": 0}
    misses = []
    for seed, (colour, shape, background) in enumerate(prompts):
        seen = classify(generate(demo, f"a {colour} {shape} on a {background} background", seed=seed))
        for key, want in (("colour", colour), ("background", background), ("shape", shape)):
            right[key] += seen[key] == want
            if seen[key] != want:
                misses.append(f"{colour} {shape} on {background}: {key} read as {seen[key]}")
    share = {key: count / len(prompts) for key, count in right.items()}
    assert share["colour"] >= 0.9 and share["background"] >= 0.9 and share["shape"] >= 0.75, (share, misses)


def test_img2img_changes_the_colour_and_keeps_the_position(demo):
    red_circle = draw((220, 30, 30), "circle", (255, 255, 255))
    # Off centre, so keeping the position means something (far-off shapes drift to the middle: captions without a
    # position word meant a centred shape in training).
    red_circle = np.roll(red_circle, shift=(0, -6), axis=(0, 1))
    image = torch.from_numpy(red_circle).permute(2, 0, 1)[None].float() / 127.5 - 1
    out = generate(demo, "a blue circle on a white background", seed=3, latent=demo.vae.encode(image), denoise=0.6)
    before, after = classify(red_circle), classify(out)
    assert before["colour"] == "red" and after["colour"] == "blue"
    assert after["background"] == "white"
    centre = lambda mask: np.array(np.nonzero(mask)).mean(axis=1)  # noqa: E731
    assert np.linalg.norm(centre(after["foreground"]) - centre(before["foreground"])) < 4


def test_txt2img_workflow_runs_on_a_fresh_folder_with_the_demo(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nodegraph", "run", str(ROOT / "workflows" / "txt2img.json"),
                           "--models", str(tmp_path / "models"), "--output", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    written = [Path(line) for line in done.stdout.split()]
    assert len(written) == 1 and written[0].is_file()
    seen = classify(np.asarray(Image.open(written[0]).convert("RGB")))
    assert seen["colour"] == "red" and seen["shape"] == "circle" and seen["background"] == "white"


def test_default_bf16_images_match_fp32_images(demo):
    """bf16 is the default on CPUs with native bf16 matrices: it must give the same picture as fp32."""
    bf16 = load_checkpoint(DEMO, device="cpu", dtype=torch.bfloat16)
    for seed, prompt in enumerate(["a red circle on a white background", "a small cyan square at the top on a black "
                                   "background", "a large yellow triangle on a gray background"]):
        exact, fast = generate(demo, prompt, seed).astype(float), generate(bf16, prompt, seed).astype(float)
        assert 10 * np.log10(255**2 / max(((exact - fast) ** 2).mean(), 1e-12)) >= 30
