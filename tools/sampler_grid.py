"""Render the demo checkpoint's pictures per sampler: one row per sampler in SAMPLER_NAMES (and our DDPMSample on
top), two prompts x two step counts as columns, one scheduler, each prompt with a fixed seed.

    python tools/sampler_grid.py [--scheduler karras] [--steps 10 20] [--out docs/sampler-grid.png]

Under each picture: what tools/demo_quality.py's classifier reads in it (colour and shape), green when it is the
prompted one, red when not.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodegraph.sd import load_checkpoint, sample  # noqa: E402
from nodegraph.sd.sampling import SAMPLER_NAMES, SCHEDULER_NAMES  # noqa: E402
from tools.demo_grid import SCALE, wrap  # noqa: E402
from tools.demo_quality import DEMO, classify, to_pixels  # noqa: E402

PROMPTS = [  # (colour, shape, prompt, seed)
    ("red", "circle", "a red circle on a white background", 0),
    ("blue", "triangle", "a blue triangle on a black background", 1),
]
ROW_LABEL_WIDTH, HEADER_HEIGHT, CAPTION_HEIGHT, GAP = 120, 44, 14, 4
BACKGROUND, TEXT, RIGHT, WRONG = (32, 33, 36), (220, 220, 220), (120, 210, 120), (240, 110, 110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEMO)
    parser.add_argument("--out", type=Path, default=Path("docs/sampler-grid.png"))
    parser.add_argument("--scheduler", default="karras", choices=SCHEDULER_NAMES)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sd = load_checkpoint(args.checkpoint, device="cpu", dtype=torch.float32)
    negative = sd.encode_prompt([""])
    encoded = [sd.encode_prompt([prompt]) for _, _, prompt, _ in PROMPTS]
    rows = [None] + list(SAMPLER_NAMES)  # None: DDPMSample (our sampler; no scheduler)
    columns = [(p, steps) for p in range(len(PROMPTS)) for steps in args.steps]
    tile = 64 * SCALE
    cell_w, cell_h = tile + GAP, tile + CAPTION_HEIGHT + GAP
    grid = Image.new("RGB", (ROW_LABEL_WIDTH + len(columns) * cell_w, HEADER_HEIGHT + len(rows) * cell_h), BACKGROUND)
    canvas = ImageDraw.Draw(grid)
    font = ImageFont.load_default()

    for c, (p, steps) in enumerate(columns):
        x = ROW_LABEL_WIDTH + c * cell_w
        for j, line in enumerate(wrap(PROMPTS[p][2], 21)[:2] + [f"seed {PROMPTS[p][3]}, {steps} steps"]):
            canvas.text((x + 2, 2 + 13 * j), line, fill=TEXT, font=font)

    start = time.perf_counter()
    for r, sampler_name in enumerate(rows):
        y = HEADER_HEIGHT + r * cell_h
        label = ["DDPMSample", "(ours, no", "scheduler)"] if sampler_name is None else [sampler_name, args.scheduler]
        for j, line in enumerate(label):
            canvas.text((6, y + tile // 2 - 12 + 13 * j), line, fill=TEXT, font=font)
        for c, (p, steps) in enumerate(columns):
            colour, shape, _, seed = PROMPTS[p]
            settings = {} if sampler_name is None else {"sampler_name": sampler_name, "scheduler": args.scheduler}
            latent = sample(sd, encoded[p], negative, torch.zeros(1, 4, 8, 8), seed=seed, steps=steps, cfg=args.cfg,
                            **settings)
            pixels = to_pixels(sd, latent)[0]
            x = ROW_LABEL_WIDTH + c * cell_w
            grid.paste(Image.fromarray(pixels).resize((tile, tile), Image.NEAREST), (x, y))
            seen = classify(pixels)
            caption = f"{seen['colour'] or '-'} {seen['shape'] or '-'}"
            ok = (seen["colour"], seen["shape"]) == (colour, shape)
            canvas.text((x + 2, y + tile + 1), caption, fill=RIGHT if ok else WRONG, font=font)
        print(f"{sampler_name or 'DDPMSample'}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
