"""The reference for the SD 2.x and SDXL parity tests: diffusers' and transformers' models of one of our tiny family
checkpoints (tests/checkpoints.py write_family_checkpoint), built as diffusers' single-file loader builds them: its
own conversion functions on the file's tensors as a plain dict, local configs standing in for the hub's (offline),
each part filled by a strict load. Also the pipelines and the scheduler the image tests run them in.

What a file cannot say comes from the real models' configs: the VAE scale (their yaml's scale_factor), each text
encoder's activation, and how many OpenCLIP-H layers diffusers' SD 2.x text encoder keeps (all but the last)."""

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench.reference import reference_tokenizer
from checkpoints import FAMILY_UNETS, TINY_BIGG, TINY_CLIP_L, TINY_OPENCLIP, TINY_VAE, TinyConfig, ldm_original_config
from nodegraph.sd.tokenizer import BOS, EOS
from nodegraph.sd.unet import UNetConfig

SCALE_FACTOR = {"sd2": 0.18215, "sdxl": 0.13025, "sdxl_refiner": 0.13025}  # the real yamls' scale_factor
# Where each text encoder sits in the file, as diffusers' pipelines name them: (pipeline argument, layout, prefix)
TEXT_ENCODERS = {
    "sd2": [("text_encoder", "open_clip_h", "cond_stage_model.model.")],
    "sdxl": [("text_encoder", "clip_l", "conditioner.embedders.0.transformer."),
             ("text_encoder_2", "open_clip_g", "conditioner.embedders.1.model.")],
    "sdxl_refiner": [("text_encoder_2", "open_clip_g", "conditioner.embedders.0.model.")],
}



def ldm_unet_params(config: UNetConfig) -> dict:
    """The LDM yaml's unet_config params for a config (diffusers' converter reads per-level depths only)."""
    levels, blocks = len(config.channel_mult), config.num_res_blocks
    per_level = [config.input_depths[level * blocks] for level in range(levels)]
    assert config.middle_depth == per_level[-1] or config.transformer_depth_input is None
    assert config.output_depths == tuple(d for d in reversed(per_level) for _ in range(blocks + 1))
    heads = {"num_heads": 8} if config.head_size is None else {"num_head_channels": config.head_size}
    return {"in_channels": config.in_channels, "out_channels": config.out_channels, "model_channels": config.model_channels,
            "attention_resolutions": [2 ** level for level in config.attention_levels], "num_res_blocks": blocks,
            "channel_mult": list(config.channel_mult), "context_dim": config.context_dim,
            "transformer_depth": config.transformer_depth if config.transformer_depth_input is None else per_level,
            "use_linear_in_transformer": config.linear_projection, **heads}


def diffusers_unet(checkpoint: dict, config: UNetConfig):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    original = {"model": {"params": {"unet_config": {"params": ldm_unet_params(config)},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet_config = sfu.create_unet_diffusers_config_from_ldm(original, checkpoint, image_size=128)
    if config.adm_in_channels:  # diffusers recognizes SDXL by context 2048/1280 only; say so for small ones
        unet_config.update(addition_embed_type="text_time", addition_time_embed_dim=256, class_embed_type=None,
                           projection_class_embeddings_input_dim=config.adm_in_channels)
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config), strict=True)
    return unet.eval()


def clip_config(layout: str, layers: int | None = None):
    """transformers' config of a tiny text encoder: CLIP-L's quick GELU, OpenCLIP's exact one; head size 64."""
    from transformers import CLIPTextConfig

    tiny = {"clip_l": TINY_CLIP_L, "open_clip_h": TINY_OPENCLIP, "open_clip_g": TINY_BIGG}[layout]
    projection = {"projection_dim": tiny.projection_dim} if layout == "open_clip_g" else {}
    return CLIPTextConfig(vocab_size=tiny.vocab_size, hidden_size=tiny.width, intermediate_size=tiny.mlp_width,
                          num_hidden_layers=tiny.layers if layers is None else layers,
                          num_attention_heads=tiny.width // 64, max_position_embeddings=tiny.context_length,
                          hidden_act="quick_gelu" if layout == "clip_l" else "gelu",
                          bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS if layout == "clip_l" else 0,
                          **projection)


def load_strictly(model, converted: dict):
    """transformers >= 5.6 CLIPTextModel has no `text_model.` level (the projection model keeps it); position_ids is
    a non-persistent buffer there."""
    expected = set(model.state_dict())
    model.load_state_dict({key if key in expected else key.removeprefix("text_model."): tensor
                           for key, tensor in converted.items() if "position_ids" not in key}, strict=True)
    return model.eval().requires_grad_(False)


def text_encoder(checkpoint: dict, layout: str, prefix: str, keep_all_layers: bool = False):
    """One text encoder through diffusers' converters. SD 2.x's converter drops the file's last OpenCLIP-H block (its
    ignore list names resblocks.23 of the real 24) so that the model ends where SD 2.x reads its prompts: the tiny
    file's last block is dropped the same way, unless `keep_all_layers`."""
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if layout == "clip_l":
        return load_strictly(CLIPTextModel(clip_config(layout)), sfu.convert_ldm_clip_checkpoint(checkpoint))
    if layout == "open_clip_g":
        model = CLIPTextModelWithProjection(clip_config(layout))
        return load_strictly(model, sfu.convert_open_clip_checkpoint(model, checkpoint, prefix=prefix))
    layers = TINY_OPENCLIP.layers - (0 if keep_all_layers else 1)
    dropped = f"{prefix}transformer.resblocks.{layers}."
    kept = {key: tensor for key, tensor in checkpoint.items() if not key.startswith(dropped)}
    model = CLIPTextModel(clip_config(layout, layers))
    return load_strictly(model, sfu.convert_open_clip_checkpoint(model, kept, prefix=prefix))


def vae(checkpoint: dict, family: str):
    from diffusers import AutoencoderKL
    from diffusers.loaders import single_file_utils as sfu

    original = ldm_original_config(TinyConfig(vae=TINY_VAE))
    original["model"]["params"]["scale_factor"] = SCALE_FACTOR[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = sfu.create_vae_diffusers_config_from_ldm(original, checkpoint, image_size=256)
    model = AutoencoderKL(**config)
    model.load_state_dict(sfu.convert_ldm_vae_checkpoint(checkpoint, config), strict=True)
    return model.eval().requires_grad_(False)


def reference_parts(path: Path, family: str) -> dict:
    """The pipeline's parts of a tiny family file, by diffusers' argument names (unet, vae, text_encoder(_2),
    tokenizer(_2)). OpenCLIP's tokenizers pad with "!" (id 0), CLIP-L's with EOS, as the real models' do."""
    checkpoint = load_file(str(path))
    parts = {"unet": diffusers_unet(checkpoint, FAMILY_UNETS[family]).requires_grad_(False),
             "vae": vae(checkpoint, family)}
    for name, layout, prefix in TEXT_ENCODERS[family]:
        parts[name] = text_encoder(checkpoint, layout, prefix)
        tokenizer = reference_tokenizer()
        if layout != "clip_l":
            tokenizer.pad_token = "!"
        parts[name.replace("text_encoder", "tokenizer")] = tokenizer
    return parts


def comfy_euler(prediction: str = "eps"):
    """diffusers' Euler as ComfyUI's euler steps, for a pipeline given ComfyUI's sigmas: SD's training schedule,
    the UNet called at the rounded timestep of each sigma (ComfyUI's nearest one by log sigma; diffusers would
    interpolate), and "leading" spacing, whose init_noise_sigma sqrt(1 + sigma_max^2) is ComfyUI's scaling of the
    starting noise."""
    from diffusers import EulerDiscreteScheduler

    class RoundedEuler(EulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None):
            super().set_timesteps(num_inference_steps, device, timesteps, sigmas)
            self.timesteps = torch.round(self.timesteps)

    return RoundedEuler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading",
                        steps_offset=1, prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction])


def sd2_pipeline(parts: dict, scheduler):
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline(**parts, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sdxl_pipeline(parts: dict, scheduler):
    from diffusers import StableDiffusionXLPipeline
    return StableDiffusionXLPipeline(**parts, scheduler=scheduler, add_watermarker=False)


def refiner_pipeline(parts: dict, scheduler):
    """The refiner runs in diffusers' img2img pipeline, text_encoder_2 (bigG) alone, with aesthetic scores."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    return StableDiffusionXLImg2ImgPipeline(**parts, text_encoder=None, tokenizer=None, scheduler=scheduler,
                                            requires_aesthetics_score=True, add_watermarker=False)
