"""Render a grid of demo-checkpoint images with their prompts, for the README.

    python tools/demo_grid.py [--checkpoint PATH] [--out docs/demo-grid.png]
"""

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodegraph.nodes.loaders import BUILTIN_CHECKPOINTS  # noqa: E402
from nodegraph.sd import load_checkpoint, sample  # noqa: E402

PROMPTS = [
    "a red circle on a white background", "a blue square on a black background",
    "a yellow triangle on a gray background", "a green circle on a black background",
    "a purple square on a white background", "an orange triangle on a white background",
    "a large pink circle on a gray background", "a small cyan square at the top on a black background",
    "a green triangle on the left on a white background", "a small red square on the right on a gray background",
    "a blue circle at the bottom on a white background", "a large yellow square on a black background",
]
SCALE, LABEL_HEIGHT, COLUMNS = 2, 40, 4


def wrap(text: str, width: int = 22) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=BUILTIN_CHECKPOINTS["demo-shapes.safetensors"])
    parser.add_argument("--out", type=Path, default=Path("docs/demo-grid.png"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cfg", type=float, default=7.5)
    args = parser.parse_args()
    sd = load_checkpoint(args.checkpoint, device="cpu", dtype=torch.float32)
    negative = sd.encode_prompt([""])
    tile = 64 * SCALE
    rows = (len(PROMPTS) + COLUMNS - 1) // COLUMNS
    grid = Image.new("RGB", (COLUMNS * tile, rows * (tile + LABEL_HEIGHT)), (32, 33, 36))
    canvas = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, prompt in enumerate(PROMPTS):
        latent = sample(sd, sd.encode_prompt([prompt]), negative, torch.zeros(1, 4, 8, 8), seed=i, steps=args.steps,
                        cfg=args.cfg)
        pixels = ((sd.vae.decode(latent)[0] / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        x, y = (i % COLUMNS) * tile, (i // COLUMNS) * (tile + LABEL_HEIGHT)
        grid.paste(Image.fromarray(pixels).resize((tile, tile), Image.NEAREST), (x, y))
        for j, line in enumerate(wrap(prompt)[:3]):
            canvas.text((x + 4, y + tile + 2 + 12 * j), line, fill=(220, 220, 220), font=font)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
