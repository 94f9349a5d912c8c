"""The full-size text encoders of SD 2.x and SDXL, built on the meta device: their sizes and their keys are those of
the real files (CLIP-L 123,060,480 parameters, OpenCLIP bigG 694,659,840, SD 2.x's OpenCLIP-H as read)."""

import pytest
import torch

from nodegraph.sd.clip import TextEncoder, TextEncoderConfig
from bench.checkpoint import BIG_G, VIT_H
from nodegraph.sd.openclip import OpenCLIPTextConfig, OpenCLIPTextEncoder

# the real files' key names (open_clip's and transformers'), per block and outside the blocks
OPENCLIP_BLOCK = [f"{module}.{kind}" for module in ("ln_1", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
                  for kind in ("weight", "bias")] + ["attn.in_proj_weight", "attn.in_proj_bias"]
OPENCLIP_TOP = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
                "text_projection", "logit_scale"]
CLIP_L_LAYER = [f"{module}.{kind}" for module in ("layer_norm1", "self_attn.q_proj", "self_attn.k_proj",
                                                  "self_attn.v_proj", "self_attn.out_proj", "layer_norm2",
                                                  "mlp.fc1", "mlp.fc2") for kind in ("weight", "bias")]
CLIP_L_TOP = ["embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
              "embeddings.position_ids", "final_layer_norm.weight", "final_layer_norm.bias"]


def on_meta(module_class, config):
    with torch.device("meta"):
        return module_class(config)


def openclip_file_keys(prefix: str, layers: int) -> set[str]:
    return ({prefix + key for key in OPENCLIP_TOP}
            | {f"{prefix}transformer.resblocks.{n}.{key}" for n in range(layers) for key in OPENCLIP_BLOCK})


def clip_l_file_keys(prefix: str, layers: int = 12) -> set[str]:
    model = prefix + "text_model."
    return {model + key for key in CLIP_L_TOP} | {f"{model}encoder.layers.{n}.{key}" for n in range(layers)
                                                  for key in CLIP_L_LAYER}


def count(module, skip=()) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if not name.startswith(tuple(skip)))


def test_clip_l_has_123_060_480_parameters():
    assert count(on_meta(TextEncoder, TextEncoderConfig())) == 123_060_480


def test_bigg_with_projection_has_694_659_840_parameters():
    encoder = on_meta(OpenCLIPTextEncoder, BIG_G)
    assert count(encoder) == 694_659_840
    assert encoder.config.heads == 20


def test_sd2_penultimate_encoding_uses_340_387_840_parameters():
    # SD 2.x reads layer -2: the last of the 24 blocks and text_projection take no part (diffusers drops them too)
    encoder = on_meta(OpenCLIPTextEncoder, VIT_H)
    assert encoder.config.heads == 16
    assert count(encoder, skip=("transformer.resblocks.23.", "text_projection")) == 340_387_840


@pytest.mark.parametrize("prefix,config", [
    ("cond_stage_model.model.", VIT_H),  # SD 2.x
    ("conditioner.embedders.1.model.", BIG_G),  # SDXL base
    ("conditioner.embedders.0.model.", BIG_G),  # SDXL refiner
])
def test_openclip_keys_are_the_real_files_keys(prefix, config):
    encoder = on_meta(OpenCLIPTextEncoder, config)
    assert {prefix + key for key in encoder.state_dict()} == openclip_file_keys(prefix, config.layers)


def test_sdxl_clip_l_keys_are_the_real_files_keys():
    prefix = "conditioner.embedders.0.transformer."
    encoder = on_meta(TextEncoder, TextEncoderConfig())
    assert {prefix + key for key in encoder.state_dict()} == clip_l_file_keys(prefix)


@pytest.mark.parametrize("config,shapes", ids=["vit_h", "bigg"], argvalues=[
    (VIT_H, {"token_embedding.weight": (49408, 1024), "positional_embedding": (77, 1024),
             "transformer.resblocks.0.attn.in_proj_weight": (3072, 1024),
             "transformer.resblocks.0.attn.in_proj_bias": (3072,),
             "transformer.resblocks.23.mlp.c_fc.weight": (4096, 1024),
             "transformer.resblocks.23.mlp.c_proj.weight": (1024, 4096),
             "text_projection": (1024, 1024), "logit_scale": ()}),
    (BIG_G, {"token_embedding.weight": (49408, 1280), "positional_embedding": (77, 1280),
             "transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
             "transformer.resblocks.31.attn.out_proj.weight": (1280, 1280),
             "transformer.resblocks.0.mlp.c_fc.weight": (5120, 1280),
             "text_projection": (1280, 1280), "logit_scale": ()}),
])
def test_openclip_shapes_are_the_real_files_and_infer_the_config_back(config, shapes):
    weights = on_meta(OpenCLIPTextEncoder, config).state_dict()
    assert {key: tuple(weights[key].shape) for key in shapes} == shapes
    assert OpenCLIPTextConfig.from_state_dict(weights) == config
