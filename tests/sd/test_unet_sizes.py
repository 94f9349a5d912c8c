"""The full SD 2.x, SDXL base and SDXL refiner UNets, built on the meta device: their sizes and keys are those of the
real files. diffusers' own single-file converter maps every key we name onto its model of the same family, which
then loads them strictly, so our key set is the original layout key for key."""

import warnings

import pytest
import torch

from bench.checkpoint import REFINER_UNET as REFINER
from bench.checkpoint import SD2_UNET as SD2
from bench.checkpoint import SDXL_UNET as SDXL
from nodegraph.sd.unet import UNet, UNetConfig

# The UNet sections of the LDM yamls the families ship with (v2-inference.yaml, sd_xl_base.yaml, sd_xl_refiner.yaml).
COMMON = {"in_channels": 4, "out_channels": 4, "num_res_blocks": 2, "num_head_channels": 64, "use_linear_in_transformer": True}
LDM_UNET = {
    "sd2": {**COMMON, "model_channels": 320, "attention_resolutions": [4, 2, 1], "channel_mult": [1, 2, 4, 4],
            "transformer_depth": 1, "context_dim": 1024},
    "sdxl": {**COMMON, "adm_in_channels": 2816, "num_classes": "sequential", "model_channels": 320,
             "attention_resolutions": [4, 2], "channel_mult": [1, 2, 4], "transformer_depth": [1, 2, 10], "context_dim": 2048},
    "refiner": {**COMMON, "adm_in_channels": 2560, "num_classes": "sequential", "model_channels": 384,
                "attention_resolutions": [4, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": 4, "context_dim": [1280] * 4},
}
CONFIGS = {"sd2": SD2, "sdxl": SDXL, "refiner": REFINER}


def diffusers_unet_config(family: str) -> dict:
    from diffusers.loaders import single_file_utils as sfu
    original = {"model": {"params": {"unet_config": {"params": LDM_UNET[family]},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sfu.create_unet_diffusers_config_from_ldm(original, {}, image_size=1024)


@pytest.fixture(scope="module", params=list(CONFIGS))
def family(request):
    """(name, our UNet on meta, its state dict, diffusers' UNet of the family on meta filled from our keys)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    with torch.device("meta"):
        ours = UNet(CONFIGS[request.param])
    config = diffusers_unet_config(request.param)
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**config)
    state = ours.state_dict()
    converted = sfu.convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in state.items()}, config)
    theirs.load_state_dict(converted, strict=True, assign=True)
    assert len(converted) == len(state)  # no key of ours was dropped or doubled on the way
    return request.param, ours, state, theirs


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sizes_are_the_families(family):
    name, ours, state, theirs = family
    expected = {"sd2": (865_910_724, 686), "sdxl": (2_567_463_684, 1680), "refiner": (2_259_526_660, 1220)}[name]
    assert (parameters(ours), len(state)) == expected
    assert (parameters(theirs), len(theirs.state_dict())) == expected


def test_config_inferred_from_the_shapes_is_the_familys(family):
    name, _, state, _ = family
    assert UNetConfig.from_state_dict(state, head_size=64) == CONFIGS[name]


def test_diffusers_reads_the_family_configs_as_published():
    """The converter's reading of the yamls is the diffusers config of the published models."""
    sd2, sdxl, refiner = (diffusers_unet_config(f) for f in ("sd2", "sdxl", "refiner"))
    assert (sd2["attention_head_dim"], sd2["cross_attention_dim"], sd2["use_linear_projection"]) == ([5, 10, 20, 20], 1024, True)
    assert (sdxl["attention_head_dim"], sdxl["transformer_layers_per_block"], sdxl["addition_embed_type"],
            sdxl["projection_class_embeddings_input_dim"]) == ([5, 10, 20], [1, 2, 10], "text_time", 2816)
    assert (refiner["block_out_channels"], refiner["attention_head_dim"], refiner["transformer_layers_per_block"],
            refiner["cross_attention_dim"], refiner["projection_class_embeddings_input_dim"]) == \
        ([384, 768, 1536, 1536], [6, 12, 24, 24], 4, 1280, 2560)
    assert refiner["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]


def shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_sdxl_keys_follow_the_original_layout():
    with torch.device("meta"):
        keys = shapes(UNet(SDXL).state_dict())
    assert keys["input_blocks.0.0.weight"] == (320, 4, 3, 3) and keys["out.2.weight"] == (4, 320, 3, 3)
    assert keys["label_emb.0.0.weight"] == (1280, 2816) and keys["label_emb.0.2.weight"] == (1280, 1280)
    assert keys["input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"] == (640, 2048)
    assert keys["input_blocks.7.1.proj_in.weight"] == (1280, 1280)  # linear projections
    assert keys["middle_block.1.transformer_blocks.9.ff.net.2.weight"] == (1280, 5120)
    assert keys["output_blocks.2.1.transformer_blocks.9.attn1.to_q.weight"] == (1280, 1280)
    assert keys["output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)  # the upsampler after the transformer
    assert keys["output_blocks.5.2.conv.weight"] == (640, 640, 3, 3)
    assert keys["output_blocks.8.0.skip_connection.weight"] == (320, 640, 1, 1)
    assert not any(k.startswith(("input_blocks.1.1.", "input_blocks.2.1.", "output_blocks.6.1.", "output_blocks.8.1."))
                   for k in keys)  # level 0 has no attention
    assert "middle_block.1.transformer_blocks.10.norm1.weight" not in keys
    assert "input_blocks.4.1.transformer_blocks.2.norm1.weight" not in keys
    assert max(int(k.split(".")[1]) for k in keys if k.startswith("input_blocks.")) == 8
    assert max(int(k.split(".")[1]) for k in keys if k.startswith("output_blocks.")) == 8


def test_sd2_and_refiner_keys_follow_the_original_layout():
    with torch.device("meta"):
        sd2, refiner = shapes(UNet(SD2).state_dict()), shapes(UNet(REFINER).state_dict())
    assert sd2["input_blocks.1.1.proj_in.weight"] == (320, 320)
    assert sd2["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)
    assert "label_emb.0.0.weight" not in sd2
    assert refiner["label_emb.0.0.weight"] == (1536, 2560)
    assert refiner["input_blocks.4.1.transformer_blocks.3.attn2.to_k.weight"] == (768, 1280)
    assert refiner["middle_block.1.transformer_blocks.3.attn2.to_k.weight"] == (1536, 1280)
    assert not any(k.startswith(("input_blocks.1.1.", "input_blocks.10.1.", "output_blocks.0.1.", "output_blocks.11.1."))
                   for k in refiner)  # levels 0 and 3 have no attention


def test_heads_follow_the_family():
    assert [UNetConfig().heads(c) for c in (320, 640, 1280)] == [8, 8, 8]
    assert [SDXL.heads(c) for c in (320, 640, 1280)] == [5, 10, 20]
    with torch.device("meta"):
        sdxl = UNet(SDXL)
    assert sdxl.input_blocks[7][1].transformer_blocks[0].attn1.heads == 20
    assert sdxl.middle_block[1].transformer_blocks[9].attn2.heads == 20
    with pytest.raises(ValueError, match="heads of 64"):
        UNetConfig(head_size=64).heads(96)
