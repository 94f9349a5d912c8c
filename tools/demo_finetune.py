"""What the demo LoRA's and the demo embedding's trainers share (tools/train_demo_lora.py, train_demo_embedding.py):
the demo checkpoint loaded frozen for training, pictures drawn by the demo's own grammar (tools/shapes.py), the
denoising loss the demo was trained with, and pictures sampled as the workflows sample, to check a trained file.

Everything is seeded: the same arguments give the same pictures, batches, noise and weights.
"""

import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import shapes  # noqa: E402
from train_demo import DEFAULT_OUT as DEMO_CHECKPOINT  # noqa: E402
from train_demo import encode_all, to_model_range  # noqa: E402

from nodegraph.sd import sample  # noqa: E402
from nodegraph.sd.checkpoint import LATENT_SCALE, StableDiffusion, load_checkpoint  # noqa: E402
from nodegraph.sd.ddpm import scaled_linear_alphas_cumprod  # noqa: E402
from nodegraph.sd.tokenizer import BOS, CONTEXT_LENGTH, EOS  # noqa: E402

PACKAGE = Path(__file__).resolve().parent.parent / "nodegraph"
# How the check pictures are sampled: the shipped workflows' KSampler setting (workflows/txt2img.json, lora.json).
CHECK_SAMPLING = {"steps": 15, "cfg": 5.0, "sampler_name": "euler_ancestral", "scheduler": "karras"}


def add_run_arguments(parser, lr: float) -> None:
    """The arguments both training scripts take beside their own."""
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-only", action="store_true", help="only sample and classify the pictures of OUT")
    parser.add_argument("--no-check", action="store_true", help="only train and write OUT")


def start_run(args) -> StableDiffusion:
    """Threads and denormals as the shipped files were trained with; the frozen demo model."""
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    return load_frozen_demo(args.checkpoint)


def load_frozen_demo(path: Path = DEMO_CHECKPOINT) -> StableDiffusion:
    """The demo checkpoint in float32 with plain (unpacked) weights, which autograd can differentiate through; every
    weight is frozen (load_checkpoint leaves them so), so only what a trainer adds learns."""
    return load_checkpoint(path, device="cpu", dtype=torch.float32, pack_weights=False)


def pictures(scenes: list[shapes.Scene], resolution: int, rng: random.Random, drawer=None) -> torch.Tensor:
    """The scenes drawn with the demo grammar's jitter (or by `drawer(scene, resolution, rng)`), in the model's
    range [-1, 1], [N, 3, H, W]."""
    drawer = drawer or shapes.draw
    return to_model_range(np.stack([np.asarray(drawer(s, resolution, rng)) for s in scenes]))


def latents_of(sd: StableDiffusion, images: torch.Tensor) -> torch.Tensor:
    """The frozen demo VAE's latents, scaled as the UNet sees them."""
    return encode_all(sd.vae, images) * LATENT_SCALE


def token_ids(sd: StableDiffusion, words: list[str | list[int]]) -> list[int]:
    """A prompt's ids in the SD layout (BOS, tokens, EOS, EOS padding) from words, or lists of ids for slots that
    are not words (an embedding's vectors)."""
    ids = [BOS]
    for word in words:
        ids += word if isinstance(word, list) else sd.tokenizer.tokens(word)
    ids = ids[:CONTEXT_LENGTH - 1] + [EOS]
    return ids + [EOS] * (CONTEXT_LENGTH - len(ids))


def denoising_loss(unet, x0: torch.Tensor, context: torch.Tensor, generator: torch.Generator,
                   alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The demo's own objective (tools/train_demo.py): SD's scaled-linear schedule, a uniform timestep, the noise
    predicted (epsilon), mean squared error; bf16 autocast, as the demo was trained."""
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, context)
    return F.mse_loss(eps.float(), noise)


def train(parameters: list[torch.Tensor], step_loss, steps: int, lr: float, desc: str) -> None:
    """AdamW with a one-cycle learning rate over `step_loss(step) -> loss`, gradients clipped to norm 1."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    bar = tqdm(range(steps), desc=desc, unit="step", mininterval=10)
    average = None
    for step in bar:
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        average = loss.item() if average is None else 0.98 * average + 0.02 * loss.item()
        bar.set_postfix(loss=f"{average:.4f}")


def schedule_alphas() -> torch.Tensor:
    """SD's training noise schedule (alphas_cumprod of its 1,000 timesteps), which the demo was trained on."""
    return scaled_linear_alphas_cumprod()


@torch.no_grad()
def sample_pictures(sd: StableDiffusion, contexts: list[torch.Tensor], seeds: list[int], size: int = 64,
                    sampling: dict = CHECK_SAMPLING) -> list[np.ndarray]:
    """One picture per (context [1,77,C], seed), uint8 RGB [H, W, 3], sampled as the shipped workflows sample."""
    negative = sd.encode_prompt([""])
    latent = torch.zeros(1, 4, size // 8, size // 8)
    out = []
    for context, seed in zip(contexts, seeds):
        result = sample(sd, context, negative, latent, seed=seed, **sampling)
        images = ((sd.vae.decode(result) / 2 + 0.5).clamp(0, 1) * 255).round().byte()
        out.append(images.permute(0, 2, 3, 1).cpu().numpy()[0])
    return out
