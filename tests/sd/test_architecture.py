"""The full SD 1.5 architecture, built on the meta device: its size and its keys are those of SD 1.5 files."""

import pytest
import torch

from nodegraph.sd.checkpoint import PARTS
from nodegraph.sd.clip import TextEncoder, TextEncoderConfig
from nodegraph.sd.unet import UNet, UNetConfig
from nodegraph.sd.vae import VAE, VAEConfig
from bench.reference import SD15_TEXT_CONFIG, diffusers_models
from checkpoints import TinyConfig, ldm_original_config


@pytest.fixture(scope="module")
def sd15():
    with torch.device("meta"):
        return {"unet": UNet(UNetConfig()), "vae": VAE(VAEConfig()), "text_encoder": TextEncoder(TextEncoderConfig())}


def parameter_millions(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def file_keys(sd15) -> dict[str, torch.Tensor]:
    return {PARTS[part][0] + key: t for part, module in sd15.items() for key, t in module.state_dict().items()}


def test_parameter_counts_are_sd15s(sd15):
    assert parameter_millions(sd15["unet"]) == 859.52
    assert parameter_millions(sd15["vae"]) == 83.65
    assert parameter_millions(sd15["text_encoder"]) == 123.06


def test_key_counts_are_sd15s(sd15):
    assert len(sd15["unet"].state_dict()) == 686
    assert len(sd15["vae"].state_dict()) == 248
    text_keys = set(sd15["text_encoder"].state_dict())
    assert len(text_keys - {"text_model.embeddings.position_ids"}) == 196
    assert "text_model.embeddings.position_ids" in text_keys


def test_keys_and_shapes_follow_the_original_layout(sd15):
    keys = file_keys(sd15)
    assert keys["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert keys["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert keys["first_stage_model.decoder.up.3.block.0.conv1.weight"].shape == (512, 512, 3, 3)
    assert keys["first_stage_model.decoder.up.0.block.0.conv1.weight"].shape == (128, 256, 3, 3)
    assert keys["cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"].shape == (3072, 768)
    assert keys["model.diffusion_model.output_blocks.11.1.proj_out.weight"].shape == (320, 320, 1, 1)


def test_config_inferred_from_sd15_shapes_is_sd15(sd15):
    assert UNetConfig.from_state_dict(sd15["unet"].state_dict()) == UNetConfig()
    assert VAEConfig.from_state_dict(sd15["vae"].state_dict()) == VAEConfig()
    assert TextEncoderConfig.from_state_dict(sd15["text_encoder"].state_dict()) == TextEncoderConfig()


def test_diffusers_conversion_of_our_sd15_keys_fills_its_sd15_models_exactly(sd15):
    """diffusers' own converters map every key we name onto its SD 1.5 models, which load them strictly."""
    full = TinyConfig(unet=UNetConfig(), vae=VAEConfig(), text=TextEncoderConfig())
    unet, vae, text = diffusers_models(file_keys(sd15), ldm_original_config(full), SD15_TEXT_CONFIG, on_meta=True)
    assert len(unet.state_dict()) == 686 and len(vae.state_dict()) == 248 and len(text.state_dict()) == 196
