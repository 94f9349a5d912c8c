"""Render what the demo LoRA and the demo embedding teach: the ring prompts without and with the LoRA, and the
sunset with and without `embedding:demo-sunset`, each picture made through the real nodes (as workflows/lora.json
runs them) with an empty models folder, prompt i with seed i.

    python tools/lora_demo_grid.py [--out docs/demo-lora.png]

Under each picture: what tools/demo_quality.py's classifier reads in it, green when it is the taught thing.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodegraph.executor import Executor  # noqa: E402
from nodegraph.nodes import Environment  # noqa: E402
from tools.demo_grid import SCALE  # noqa: E402
from tools.demo_quality import BACKGROUNDS, COLOURS, classify, sees_sunset  # noqa: E402

LORA, EMBEDDING = "demo-ring.safetensors", "demo-sunset"
# The ring prompts: prompt i (sampled with seed i) has colour i and the backgrounds in turn.
RING_PROMPTS = [f"a {COLOURS[i % 8]} ring on a {list(BACKGROUNDS)[i % 3]} background" for i in range(12)]
LABEL_WIDTH, CAPTION_HEIGHT, GAP = 150, 14, 4
BACKGROUND, TEXT, RIGHT, WRONG = (32, 33, 36), (220, 220, 220), (120, 210, 120), (240, 110, 110)


def fresh_environment(root: Path) -> Environment:
    """An empty models folder under `root`: the demo checkpoint, LoRA and embedding come from the package. fp32 on
    the CPU, so the pictures do not depend on the machine's bf16 support."""
    for name in ("input", "output", "temp"):
        (root / name).mkdir(exist_ok=True)
    return Environment(models_dir=root / "models", input_dir=root / "input", output_dir=root / "output",
                       temp_dir=root / "temp", device="cpu", dtype="fp32")


def shipped_sampling() -> dict:
    """The KSampler settings of workflows/lora.json: what a user runs."""
    inputs = json.loads((ROOT / "workflows" / "lora.json").read_text())["nodes"]["sample"]["inputs"]
    return {key: inputs[key] for key in ("steps", "cfg", "sampler_name", "scheduler")}


def node(type_name: str, **inputs) -> dict:
    return {"type": type_name, "inputs": inputs}


def pictures(env: Environment, prompts: list[str], lora_strength: float | None = None) -> list[np.ndarray]:
    """One picture per prompt (prompt i with seed i) from one workflow run: the demo checkpoint, through LoraLoader
    at `lora_strength` (model and clip) unless None."""
    nodes = {"ckpt": node("CheckpointLoaderSimple", ckpt_name="demo-shapes.safetensors")}
    model, clip = ["ckpt", "MODEL"], ["ckpt", "CLIP"]
    if lora_strength is not None:
        nodes["lora"] = node("LoraLoader", model=model, clip=clip, lora_name=LORA, strength_model=lora_strength,
                             strength_clip=lora_strength)
        model, clip = ["lora", "MODEL"], ["lora", "CLIP"]
    nodes["neg"] = node("CLIPTextEncode", clip=clip, text="")
    nodes["empty"] = node("EmptyLatentImage", width=64, height=64, batch_size=1)
    for seed, prompt in enumerate(prompts):
        nodes[f"pos{seed}"] = node("CLIPTextEncode", clip=clip, text=prompt)
        nodes[f"sample{seed}"] = node("KSampler", model=model, seed=seed, positive=[f"pos{seed}", "CONDITIONING"],
                                      negative=["neg", "CONDITIONING"], latent_image=["empty", "LATENT"], denoise=1.0,
                                      **shipped_sampling())
        nodes[f"decode{seed}"] = node("VAEDecode", vae=["ckpt", "VAE"], latent=[f"sample{seed}", "LATENT"])
        nodes[f"save{seed}"] = node("SaveImage", images=[f"decode{seed}", "image"], prefix=f"picture{seed:02d}")
    before = set(env.output_dir.iterdir())
    Executor(env).run({"version": 1, "nodes": nodes})
    written = sorted(set(env.output_dir.iterdir()) - before)
    if len(written) != len(prompts):
        raise RuntimeError(f"{len(prompts)} prompts wrote {len(written)} pictures")
    return [np.asarray(Image.open(path).convert("RGB")) for path in written]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo-lora.png")
    parser.add_argument("--columns", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = RING_PROMPTS[:args.columns]
    rows = [  # (label lines, prompts, LoRA strength, what counts as taught)
        ([LORA, "strength 0"], prompts, 0.0, lambda seen: seen["shape"] == "ring"),
        ([LORA, "strength 1"], prompts, 1.0, lambda seen: seen["shape"] == "ring"),
        (["a sunset", "(no embedding)"], ["a sunset"] * args.columns, None, sees_sunset),
        ([f"embedding:{EMBEDDING}"], [f"embedding:{EMBEDDING}"] * args.columns, None, sees_sunset),
    ]
    tile = 64 * SCALE
    cell_w, cell_h = tile + GAP, tile + CAPTION_HEIGHT + GAP
    header = 30
    grid = Image.new("RGB", (LABEL_WIDTH + args.columns * cell_w, header + len(rows) * cell_h), BACKGROUND)
    canvas = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, prompt in enumerate(prompts):
        for j, line in enumerate([" ".join(prompt.split()[1:3]), f"seed {c}"]):
            canvas.text((LABEL_WIDTH + c * cell_w + 2, 2 + 13 * j), line, fill=TEXT, font=font)
    with tempfile.TemporaryDirectory() as folder:
        env = fresh_environment(Path(folder))
        for r, (label, row_prompts, strength, taught) in enumerate(rows):
            y = header + r * cell_h
            for j, line in enumerate(label):
                canvas.text((6, y + tile // 2 - 8 + 13 * j), line, fill=TEXT, font=font)
            for c, pixels in enumerate(pictures(env, row_prompts, strength)):
                x = LABEL_WIDTH + c * cell_w
                grid.paste(Image.fromarray(pixels).resize((tile, tile), Image.NEAREST), (x, y))
                seen = classify(pixels)
                canvas.text((x + 2, y + tile + 1), f"{seen['colour'] or '-'} {seen['shape'] or '-'}",
                            fill=RIGHT if taught(seen) else WRONG, font=font)
            print(f"row {r + 1}/{len(rows)}", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
