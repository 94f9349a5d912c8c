"""diffusers models on the same file, built the fastest way diffusers offers offline: its single-file conversion
functions on the loaded tensors, models created on the meta device and filled with assign=True."""

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

SD15_ORIGINAL_CONFIG = {"model": {"params": {
    "scale_factor": 0.18215,
    "unet_config": {"params": {"in_channels": 4, "out_channels": 4, "model_channels": 320,
                               "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                               "num_heads": 8, "transformer_depth": 1, "context_dim": 768}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "z_channels": 4, "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2}}},
}}}


def load_diffusers(path: Path, dtype: torch.dtype = torch.float32):
    """(unet, vae, text_encoder) as diffusers/transformers modules, in `dtype`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    checkpoint = load_file(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet_config = sfu.create_unet_diffusers_config_from_ldm(SD15_ORIGINAL_CONFIG, checkpoint, image_size=512)
        vae_config = sfu.create_vae_diffusers_config_from_ldm(SD15_ORIGINAL_CONFIG, checkpoint, image_size=512)
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**unet_config), AutoencoderKL(**vae_config)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, hidden_act="quick_gelu"))
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config), strict=True, assign=True)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(checkpoint, vae_config), strict=True, assign=True)
    clip = sfu.convert_ldm_clip_checkpoint(checkpoint)
    expected = set(text.state_dict())
    clip = {k if k in expected else k.removeprefix("text_model."): v for k, v in clip.items() if "position_ids" not in k}
    text.load_state_dict(clip, strict=True, assign=True)
    for module in text.modules():  # a non-persistent buffer, left on the meta device by the load
        if "position_ids" in module._buffers:
            module.register_buffer("position_ids", torch.arange(77).unsqueeze(0), persistent=False)
    return tuple(m.to(dtype).eval().requires_grad_(False) for m in (unet, vae, text))
