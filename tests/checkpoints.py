"""Small random-weight SD 1.x checkpoints in the original single-file layout, for tests.

Every parameter is random and non-zero (output convolutions included, unlike a fresh training init), scaled so
activations stay in a sane range through many sampler steps. A file is written with our own modules' key paths; the
parity tests prove those are the real layout by loading the same file through diffusers' own conversion functions.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from nodegraph.sd.checkpoint import PARTS
from nodegraph.sd.clip import TextEncoder, TextEncoderConfig
from nodegraph.sd.unet import UNet, UNetConfig
from nodegraph.sd.vae import VAE, VAEConfig


@dataclass(frozen=True)
class TinyConfig:
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(
        model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(0, 1), context_dim=128))
    vae: VAEConfig = field(default_factory=lambda: VAEConfig(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1))
    text: TextEncoderConfig = field(default_factory=lambda: TextEncoderConfig(width=128, layers=2, mlp_width=256))


def randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Random, non-zero values everywhere: weights ~ N(0, 1/fan_in), norms' scales near 1, biases small."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel() if name.endswith("weight") and "embedding" not in name else 1
                std = fan_in ** -0.5 if fan_in > 1 else 0.02
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
            param[param == 0] = 1e-3  # random and non-zero, without exception


def build_state_dict(config: TinyConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    modules = {"unet": UNet(config.unet), "vae": VAE(config.vae), "text_encoder": TextEncoder(config.text)}
    state = {}
    for part, module in modules.items():
        randomize(module, generator)
        prefix = PARTS[part][0]
        state.update({prefix + key: tensor.contiguous() for key, tensor in module.state_dict().items()})
    return state


def write_checkpoint(path: Path, config: TinyConfig = TinyConfig(), seed: int = 0, dtype: torch.dtype = torch.float32,
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in build_state_dict(config, seed).items()}
    state.update(extra or {})
    save_file(state, str(path))
    return path


def ldm_original_config(config: TinyConfig) -> dict:
    """The parsed LDM yaml (as diffusers' single-file conversion functions read it) for a tiny config."""
    unet, vae = config.unet, config.vae
    return {"model": {"params": {
        "scale_factor": 0.18215,
        "unet_config": {"params": {
            "in_channels": unet.in_channels, "out_channels": unet.out_channels, "model_channels": unet.model_channels,
            "attention_resolutions": [2 ** level for level in unet.attention_levels],
            "num_res_blocks": unet.num_res_blocks, "channel_mult": list(unet.channel_mult), "num_heads": 8,
            "transformer_depth": unet.transformer_depth, "context_dim": unet.context_dim,
            "use_linear_in_transformer": unet.linear_projection,
        }},
        "first_stage_config": {"params": {"embed_dim": vae.latent_channels, "ddconfig": {
            "z_channels": vae.latent_channels, "in_channels": vae.in_channels, "out_ch": vae.out_channels,
            "ch": vae.base_channels, "ch_mult": list(vae.channel_mult), "num_res_blocks": vae.num_res_blocks,
        }}},
    }}}
