"""Train the demo checkpoint from scratch on generated pictures of shapes, on the CPU, reproducibly.

    python tools/train_demo.py                      # writes nodegraph/checkpoints/demo-shapes.safetensors

Three stages, all seeded: (1) the VAE learns to reconstruct the pictures; its latent scale is then folded into its
1x1 quant convolutions so that raw latents times SD's 0.18215 have unit variance, as the sampler expects; (2) the
pictures are encoded once; (3) the UNet and the CLIP text encoder learn together to predict the noise (SD's
scaled-linear schedule, epsilon objective), with 10% of captions dropped to "" so classifier-free guidance works.
The weights saved are an exponential moving average, in fp16, in the SD 1.x single-file layout.
"""

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import shapes  # noqa: E402
from nodegraph.sd.checkpoint import LATENT_SCALE, PARTS, load_checkpoint  # noqa: E402
from nodegraph.sd.clip import TextEncoder, TextEncoderConfig  # noqa: E402
from nodegraph.sd.ddpm import scaled_linear_alphas_cumprod  # noqa: E402
from nodegraph.sd.tokenizer import Tokenizer  # noqa: E402
from nodegraph.sd.unet import UNet, UNetConfig  # noqa: E402
from nodegraph.sd.vae import VAE, VAEConfig  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "nodegraph" / "checkpoints" / "demo-shapes.safetensors"
TEXT = TextEncoderConfig(width=64, layers=3, mlp_width=256)
VAE_CONFIG = VAEConfig(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1)
# Attention at the 4x4 level and the middle only: at 8x8 its 8-channel heads cost a third of a training step on the
# CPU for little gain on pictures this simple.
UNET = UNetConfig(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(1,),
                  context_dim=TEXT.width)


def to_model_range(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(images: torch.Tensor, steps: int, batch_size: int, seed: int) -> VAE:
    torch.manual_seed(seed)
    vae = VAE(VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    latent_channels = VAE_CONFIG.latent_channels
    bar = tqdm(range(steps), desc="vae", unit="step", mininterval=10)
    for step in bar:
        x = images[torch.randint(len(images), (batch_size,), generator=generator)]
        if step < steps * 3 // 4:
            # Convolutions do not care where a patch sits: the first three quarters train on 32x32 crops (4x cheaper),
            # the last quarter on whole pictures, so the norms and the mid attention see full-size statistics.
            top, left = (int(v) for v in torch.randint(0, x.shape[-1] - 32 + 1, (2,), generator=generator) // 8 * 8)
            x = x[:, :, top:top + 32, left:left + 32]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            moments = vae.quant_conv(vae.encoder(x))
        mean, logvar = moments.float()[:, :latent_channels], moments.float()[:, latent_channels:].clamp(-30, 20)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reconstruction = vae.decoder(vae.post_quant_conv(z)).float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = F.mse_loss(reconstruction, x) + 0.5 * F.l1_loss(reconstruction, x) + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", kl=f"{kl.item():.1f}")
    return vae.eval()


def finetune_decoder(vae: VAE, images: torch.Tensor, latents: torch.Tensor, steps: int, batch_size: int,
                     seed: int) -> VAE:
    """Train the decoder further on the frozen encoder's latents: sharper pictures and truer colours, while the
    latent space the UNet learns stays exactly the same."""
    generator = torch.Generator().manual_seed(seed + 1)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-4, total_steps=steps, pct_start=0.05)
    vae.train()
    bar = tqdm(range(steps), desc="decoder", unit="step", mininterval=10)
    for _ in bar:
        index = torch.randint(len(images), (batch_size,), generator=generator)
        x = images[index]
        # A little noise on the latents: the decoder also meets the sampler's slightly imperfect ones.
        z = latents[index] * (1 + 0.02 * torch.randn(latents[index].shape, generator=generator))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reconstruction = vae.decoder(vae.post_quant_conv(z)).float()
        loss = F.mse_loss(reconstruction, x) + 0.5 * F.l1_loss(reconstruction, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return vae.eval()


@torch.no_grad()
def encode_all(vae: VAE, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([vae.encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def fold_latent_scale(vae: VAE, latents: torch.Tensor) -> float:
    """Scale the VAE's raw latent space so that raw * 0.18215 has unit variance, without changing what it computes:
    the mean rows of quant_conv grow by k and post_quant_conv's input columns shrink by k."""
    k = (1.0 / LATENT_SCALE) / latents.std().item()
    channels = VAE_CONFIG.latent_channels
    vae.quant_conv.weight[:channels] *= k
    vae.quant_conv.bias[:channels] *= k
    vae.post_quant_conv.weight[:, :channels] /= k
    return k


def train_diffusion(latents: torch.Tensor, token_ids: torch.Tensor, empty_ids: torch.Tensor, steps: int,
                    batch_size: int, seed: int, lr: float) -> tuple[UNet, TextEncoder]:
    torch.manual_seed(seed)
    unet, text_encoder = UNet(UNET), TextEncoder(TEXT)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.03)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    alphas_cumprod = scaled_linear_alphas_cumprod()
    generator = torch.Generator().manual_seed(seed)
    x0_all = latents * LATENT_SCALE
    bar = tqdm(range(steps), desc="unet+clip", unit="step", mininterval=10)
    for step in bar:
        index = torch.randint(len(latents), (batch_size,), generator=generator)
        ids = token_ids[index].clone()
        dropped = torch.rand(batch_size, generator=generator) < 0.1
        ids[dropped] = empty_ids
        x0 = x0_all[index]
        t = torch.randint(0, 1000, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eps = unet(xt, t, text_encoder(ids))
        loss = F.mse_loss(eps.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema_unet.eval(), ema_text.eval()


def save_checkpoint(path: Path, unet: UNet, vae: VAE, text_encoder: TextEncoder) -> None:
    state = {}
    for part, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        prefix = PARTS[part][0]
        for key, tensor in module.state_dict().items():
            state[prefix + key] = (tensor.half() if tensor.is_floating_point() else tensor).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt", "nodegraph": "demo-shapes; see tools/train_demo.py"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--images", type=int, default=40000)
    parser.add_argument("--vae-from", type=Path, help="skip stage 1: the .vae.safetensors an earlier run wrote")
    parser.add_argument("--vae-only", action="store_true", help="stop after the VAE stages (writes OUT.vae.safetensors)")
    parser.add_argument("--unet-from", type=Path, help="skip stage 3: take the UNet and text encoder of this checkpoint")
    parser.add_argument("--vae-steps", type=int, default=1600)
    parser.add_argument("--decoder-steps", type=int, default=1000)
    parser.add_argument("--vae-batch-size", type=int, default=24)
    parser.add_argument("--unet-steps", type=int, default=4500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    # Tiny values (Adam's second moments, small gradients) become denormal floats as training goes on, and those run
    # many times slower on the CPU: flush them to zero.
    torch.set_flush_denormal(True)
    random.seed(args.seed)
    started = time.time()

    pixels, captions = shapes.dataset(args.images, args.resolution, args.seed)
    images = to_model_range(pixels)
    print(f"{len(images)} pictures at {args.resolution}px, {len(set(captions))} distinct captions")

    if args.vae_from:  # reuse the VAE of an earlier run (its latent scale already folded in)
        vae = VAE(VAE_CONFIG)
        vae.load_state_dict(load_file(str(args.vae_from)))
        vae.eval()
        latents = encode_all(vae, images)
    else:
        vae = train_vae(images, args.vae_steps, args.vae_batch_size, args.seed)
        latents = encode_all(vae, images)
        k = fold_latent_scale(vae, latents)
        latents = latents * k  # what the folded encoder now gives, without encoding 40,000 pictures again
        print(f"latent scale folded in (x{k:.3f})")
    print(f"scaled latent std {latents.std().item() * LATENT_SCALE:.3f}")
    if args.decoder_steps:
        vae = finetune_decoder(vae, images, latents, args.decoder_steps, 16, args.seed)
    save_file(vae.state_dict(), str(args.out.with_suffix(".vae.safetensors")))
    if args.vae_only:
        return

    tokenizer = Tokenizer()
    unique = sorted(set(captions))
    unique_ids = tokenizer(unique)
    token_ids = unique_ids[torch.tensor([unique.index(c) for c in captions])]
    if args.unet_from:  # the UNet and text encoder of an earlier run's checkpoint
        trained = load_checkpoint(args.unet_from, device="cpu", dtype=torch.float32, pack_weights=False)
        unet, text_encoder = trained.unet, trained.text_encoder
    else:
        with sdpa_kernel(SDPBackend.MATH):  # faster than the flash kernel for these tiny heads on the CPU
            unet, text_encoder = train_diffusion(latents, token_ids, tokenizer([""])[0], args.unet_steps,
                                                 args.batch_size, args.seed, args.lr)
    save_checkpoint(args.out, unet, vae, text_encoder)
    size = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB) in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
