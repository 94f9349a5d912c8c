"""A full-size SD 1.5-shaped checkpoint with random weights, built once: timing does not depend on the values."""

from pathlib import Path

import torch
from safetensors.torch import save_file

from nodegraph.sd.checkpoint import PARTS
from nodegraph.sd.clip import TextEncoder, TextEncoderConfig
from nodegraph.sd.openclip import OpenCLIPTextConfig
from nodegraph.sd.unet import UNet, UNetConfig
from nodegraph.sd.vae import VAE, VAEConfig

CACHE = Path(__file__).resolve().parent / "cache"


def sd15_random_checkpoint(path: Path = CACHE / "sd15-random-fp16.safetensors", seed: int = 0) -> Path:
    """SD 1.5's exact layout (686 UNet, 248 VAE, 197 text keys), fp16 like most published files."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        parts = {"unet": UNet(UNetConfig()), "vae": VAE(VAEConfig()), "text_encoder": TextEncoder(TextEncoderConfig())}
    state = {}
    for part, module in parts.items():
        for key, meta in module.state_dict().items():
            if not meta.is_floating_point():
                state[PARTS[part][0] + key] = torch.arange(meta.shape[-1]).reshape(meta.shape)
                continue
            # Scaled like a trained network (weights ~ 1/sqrt(fan_in), norms ~1) so activations stay finite in fp16.
            fan_in = meta[0].numel() if meta.ndim >= 2 else 0
            if fan_in:
                tensor = torch.randn(meta.shape, generator=generator) * fan_in ** -0.5
            elif "norm" in key and key.endswith("weight"):
                tensor = 1 + 0.1 * torch.randn(meta.shape, generator=generator)
            else:
                tensor = 0.02 * torch.randn(meta.shape, generator=generator)
            state[PARTS[part][0] + key] = tensor.half()
    save_file(state, str(path))
    return path


def tensor_bytes(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(path, framework="pt") as file:
        for key in file.keys():
            tensor_slice = file.get_slice(key)
            shape = tensor_slice.get_shape()
            count = 1
            for n in shape:
                count *= n
            total += count * {"F16": 2, "BF16": 2, "F32": 4, "I64": 8}[tensor_slice.get_dtype()]
    return total


# --- the families' full-size configs, as the real files' shapes give them (bench, and the tests' size checks) -------

SD2_UNET = UNetConfig(context_dim=1024, linear_projection=True, head_size=64)
SDXL_UNET = UNetConfig(model_channels=320, channel_mult=(1, 2, 4), attention_levels=(1, 2), transformer_depth=2,
                       context_dim=2048, linear_projection=True, head_size=64, adm_in_channels=2816,
                       transformer_depth_input=(0, 0, 2, 2, 10, 10), transformer_depth_middle=10,
                       transformer_depth_output=(10, 10, 10, 2, 2, 2, 0, 0, 0))
REFINER_UNET = UNetConfig(model_channels=384, channel_mult=(1, 2, 4, 4), attention_levels=(1, 2), transformer_depth=4,
                          context_dim=1280, linear_projection=True, head_size=64, adm_in_channels=2560)
VIT_H = OpenCLIPTextConfig(width=1024, layers=24, mlp_width=4096, projection_dim=1024)  # SD 2.x
BIG_G = OpenCLIPTextConfig(width=1280, layers=32, mlp_width=5120, projection_dim=1280)  # SDXL base and refiner
