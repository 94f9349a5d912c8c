"""Small random-weight SD 1.x checkpoints in the original single-file layout, for tests.

Every parameter is random and non-zero (output convolutions included, unlike a fresh training init), scaled so
activations stay in a sane range through many sampler steps. A file is written with our own modules' key paths; the
parity tests prove those are the real layout by loading the same file through diffusers' own conversion functions.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from nodegraph.sd.checkpoint import PARTS
from nodegraph.sd.clip import TextEncoder, TextEncoderConfig
from nodegraph.sd.families import V_PREDICTION_PROBE
from nodegraph.sd.openclip import OpenCLIPTextConfig, OpenCLIPTextEncoder
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


# --- the other families: tiny SD 2.x, SDXL base and refiner files in their own layouts ------------------------------

TINY_VAE = VAEConfig(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1)
# OpenCLIP text encoders: 2 heads of 64; bigG's projection keeps SDXL's 1280-wide pooled output, so the ADM widths
# are the real 2816 and 2560.
TINY_CLIP_L = TextEncoderConfig(width=64, layers=3, mlp_width=128)
TINY_OPENCLIP = OpenCLIPTextConfig(width=128, layers=3, mlp_width=256, projection_dim=128)
TINY_BIGG = OpenCLIPTextConfig(width=128, layers=3, mlp_width=256, projection_dim=1280)
FAMILY_UNETS = {  # head size 64: 64- and 128-channel levels have 1 and 2 heads
    # SD 2.x's own 4 levels of 2 res blocks: ComfyUI's v-prediction probe sits in output block 11
    "sd2": UNetConfig(model_channels=64, channel_mult=(1, 1, 2, 2), num_res_blocks=2, attention_levels=(0, 1, 2),
                      context_dim=128, linear_projection=True, head_size=64),
    "sdxl": UNetConfig(model_channels=64, channel_mult=(1, 1, 2), num_res_blocks=1, attention_levels=(1, 2),
                       context_dim=64 + 128, linear_projection=True, head_size=64, adm_in_channels=2816,
                       transformer_depth_input=(0, 1, 2), transformer_depth_middle=2,
                       transformer_depth_output=(2, 2, 1, 1, 0, 0)),
    "sdxl_refiner": UNetConfig(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(1, 2),
                               transformer_depth=2, context_dim=128, linear_projection=True, head_size=64,
                               adm_in_channels=2560),
}
FAMILY_TEXT = {  # family -> [(file prefix, text encoder module)]
    "sd2": [("cond_stage_model.model.", lambda: OpenCLIPTextEncoder(TINY_OPENCLIP))],
    "sdxl": [("conditioner.embedders.0.transformer.", lambda: TextEncoder(TINY_CLIP_L)),
             ("conditioner.embedders.1.model.", lambda: OpenCLIPTextEncoder(TINY_BIGG))],
    "sdxl_refiner": [("conditioner.embedders.0.model.", lambda: OpenCLIPTextEncoder(TINY_BIGG))],
}


def build_family_state_dict(family: str, seed: int = 0, in_channels: int = 4,
                            v_prediction: bool = False) -> dict[str, torch.Tensor]:
    """A random checkpoint of `family` ("sd2", "sdxl", "sdxl_refiner") with its keys as real files have them.
    `v_prediction` spreads the norm bias ComfyUI reads to tell SD 2.x 768-v files (families.py)."""
    generator = torch.Generator().manual_seed(seed)
    unet_config = dataclasses.replace(FAMILY_UNETS[family], in_channels=in_channels)
    modules = [("model.diffusion_model.", UNet(unet_config)), ("first_stage_model.", VAE(TINY_VAE))]
    modules += [(prefix, build()) for prefix, build in FAMILY_TEXT[family]]
    state = {}
    for prefix, module in modules:
        randomize(module, generator)
        state.update({prefix + key: tensor.contiguous() for key, tensor in module.state_dict().items()})
    probe = "model.diffusion_model." + V_PREDICTION_PROBE
    if probe in state:  # an eps file's bias spread stays under ComfyUI's threshold, a v file's above it
        spread = 0.2 if v_prediction else 0.02
        state[probe] = spread * torch.randn(state[probe].shape, generator=generator)
    return state


def write_family_checkpoint(path: Path, family: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                            **options) -> Path:
    state = {k: (v.to(dtype) if v.is_floating_point() else v)
             for k, v in build_family_state_dict(family, seed, **options).items()}
    save_file(state, str(path))
    return path
