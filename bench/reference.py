"""diffusers and transformers models built from an SD 1.x single-file checkpoint through diffusers' own single-file
conversion functions, offline. The benchmark runs them, and the parity tests compare against them."""

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
SD15_TEXT_CONFIG = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12}


def diffusers_models(checkpoint: dict, original_config: dict, text_config: dict, on_meta: bool = False):
    """(unet, vae, text_encoder) from a checkpoint's tensors, each filled by a strict load. `original_config` is the
    parsed LDM yaml; `text_config` the CLIPTextConfig fields. On the meta device the tensors are assigned, not copied:
    the fastest offline path diffusers has."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet_config = sfu.create_unet_diffusers_config_from_ldm(original_config, checkpoint, image_size=512)
        vae_config = sfu.create_vae_diffusers_config_from_ldm(original_config, checkpoint, image_size=512)
    with torch.device("meta" if on_meta else "cpu"):
        unet, vae = UNet2DConditionModel(**unet_config), AutoencoderKL(**vae_config)
        text = CLIPTextModel(CLIPTextConfig(hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                                            pad_token_id=49407, **text_config))
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config), strict=True, assign=on_meta)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(checkpoint, vae_config), strict=True, assign=on_meta)
    expected = set(text.state_dict())
    # transformers >= 5.6 has no `text_model.` level; position_ids is a non-persistent buffer there.
    clip = {k if k in expected else k.removeprefix("text_model."): v
            for k, v in sfu.convert_ldm_clip_checkpoint(checkpoint).items() if "position_ids" not in k}
    text.load_state_dict(clip, strict=True, assign=on_meta)
    if on_meta:
        for module in text.modules():  # a non-persistent buffer, left on the meta device by the load
            if "position_ids" in module._buffers:
                module.register_buffer("position_ids", torch.arange(77).unsqueeze(0), persistent=False)
    return unet.eval(), vae.eval(), text.eval()


def load_diffusers(path: Path, dtype: torch.dtype = torch.float32):
    """(unet, vae, text_encoder) of an SD 1.5 file as diffusers/transformers modules, in `dtype`."""
    models = diffusers_models(load_file(str(path)), SD15_ORIGINAL_CONFIG, SD15_TEXT_CONFIG, on_meta=True)
    return tuple(m.to(dtype).requires_grad_(False) for m in models)


def reference_tokenizer():
    """transformers' CLIPTokenizer over our vocab files, as diffusers' pipeline uses it."""
    from transformers import CLIPTokenizer

    from nodegraph.sd.tokenizer import VOCAB_DIR
    return CLIPTokenizer(str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt"), model_max_length=77)
