"""diffusers and transformers models built from one of our checkpoint files through diffusers' own single-file
conversion functions, offline: the reference our parity tests compare against."""

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from checkpoints import TinyConfig, ldm_original_config


def reference_models(path: Path, config: TinyConfig):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    checkpoint = load_file(str(path))
    original = ldm_original_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet_config = sfu.create_unet_diffusers_config_from_ldm(original, checkpoint, image_size=64)
        vae_config = sfu.create_vae_diffusers_config_from_ldm(original, checkpoint, image_size=64)
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config), strict=True)
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(checkpoint, vae_config), strict=True)

    text = config.text
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=text.vocab_size, hidden_size=text.width, intermediate_size=text.mlp_width,
        num_hidden_layers=text.layers, num_attention_heads=text.heads, max_position_embeddings=text.context_length,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    clip_weights = sfu.convert_ldm_clip_checkpoint(checkpoint)
    expected = set(text_encoder.state_dict())
    # transformers >= 5.6 has no `text_model.` level; position_ids is a non-persistent buffer there.
    clip_weights = {k if k in expected else k.removeprefix("text_model."): v for k, v in clip_weights.items()
                    if not k.endswith("position_ids")}
    text_encoder.load_state_dict(clip_weights, strict=True)
    return unet.eval(), vae.eval(), text_encoder.eval()


def reference_tokenizer():
    from transformers import CLIPTokenizer

    from nodegraph.sd.tokenizer import VOCAB_DIR
    return CLIPTokenizer(str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt"), model_max_length=77)
