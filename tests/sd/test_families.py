"""load_checkpoint tells the model family from a file's keys and shapes, as ComfyUI does, and refuses files of
families it does not run, naming what it found."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import build_family_state_dict, write_checkpoint, write_family_checkpoint
from nodegraph.sd import CheckpointError, load_checkpoint
from nodegraph.sd.clip import TextEncoderConfig
from nodegraph.sd.families import SD1, SD2, SDXL, SDXL_REFINER, FamilyError, detect_family


def shapes_of(state: dict) -> dict:
    return {key: torch.empty(tensor.shape, dtype=tensor.dtype, device="meta") for key, tensor in state.items()}


@pytest.mark.parametrize("family, expected", [("sd2", SD2), ("sdxl", SDXL), ("sdxl_refiner", SDXL_REFINER)])
def test_each_family_is_told_from_its_keys(tmp_path, family, expected):
    sd = load_checkpoint(write_family_checkpoint(tmp_path / "model.safetensors", family), device="cpu",
                         dtype=torch.float32)
    assert sd.family == expected
    assert list(sd.text_encoders) == [recipe.name for recipe in expected.text]
    assert sd.latent_scale == expected.latent_scale and sd.schedule.prediction == "eps"
    assert (sd.unet.config.adm_in_channels is not None) == (expected.adm is not None)


def test_sd1_files_load_as_before(tiny_checkpoint):
    sd = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)
    assert sd.family == SD1 and list(sd.text_encoders) == ["clip_l"] and sd.latent_scale == 0.18215


def test_the_families_read_prompts_as_comfyui_does():
    # SD 1.x: the last layer through the final norm, EOS padding; SD 2.x: the penultimate through the norm, 0 padding;
    # SDXL: both encoders' penultimate layers without the norm (REFERENCE.md, ComfyUI's sd1_clip/sd2_clip/sdxl_clip)
    read = lambda family: [(r.name, r.default_layer, r.layer_norm, r.pad_token) for r in family.text]  # noqa: E731
    assert read(SD1) == [("clip_l", -1, True, 49407)]
    assert read(SD2) == [("clip_h", -2, True, 0)]
    assert read(SDXL) == [("clip_l", -2, False, 49407), ("clip_g", -2, False, 0)]
    assert read(SDXL_REFINER) == [("clip_g", -2, False, 0)]


def test_sdxl_prompts_join_both_encoders_on_the_feature_axis(tmp_path):
    sd = load_checkpoint(write_family_checkpoint(tmp_path / "xl.safetensors", "sdxl"), device="cpu",
                         dtype=torch.float32)
    ids = sd.tokenizer(["a red circle"])
    clip_l, clip_g = sd.text_encoders["clip_l"], sd.text_encoders["clip_g"]
    expected_l = clip_l.from_embeddings(clip_l.token_embeddings(ids), -2, False)[0]
    expected_g = clip_g.from_embeddings(clip_g.token_embeddings(sd.tokenizer(["a red circle"], pad_token=0)), -2,
                                        False)[0]
    assert torch.equal(sd.encode_prompt(["a red circle"]), torch.cat([expected_l, expected_g], dim=-1))


def test_sd2_v_prediction_is_decided_by_comfyuis_norm_bias_test(tmp_path):
    eps = load_checkpoint(write_family_checkpoint(tmp_path / "512.safetensors", "sd2"), device="cpu")
    v = load_checkpoint(write_family_checkpoint(tmp_path / "768-v.safetensors", "sd2", v_prediction=True), device="cpu")
    assert (eps.family.prediction, eps.schedule.prediction) == ("eps", "eps")
    assert (v.family.prediction, v.schedule.prediction) == ("v", "v") and v.family.label == "SD 2.x (v-prediction)"


def test_inpainting_unets_are_sd1_or_sd2_with_nine_channels(tmp_path):
    # ComfyUI: 9-channel SD 2.x inpainting models are eps whatever the norm bias says
    sd = load_checkpoint(write_family_checkpoint(tmp_path / "inpaint.safetensors", "sd2", in_channels=9,
                                                 v_prediction=True), device="cpu")
    assert sd.family.inpainting and sd.family.prediction == "eps" and sd.unet.config.in_channels == 9
    assert sd.family.label == "SD 2.x inpainting"


def test_an_sdxl_unet_alone_is_told_from_its_adm_width():
    state = build_family_state_dict("sdxl_refiner")
    unet_only = {key: value for key, value in state.items() if key.startswith("model.diffusion_model.")}
    assert detect_family(shapes_of(unet_only)) == SDXL_REFINER


@pytest.mark.parametrize("key, found", [
    ("model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight", "SD3"),
    ("double_blocks.0.img_attn.qkv.weight", "Flux"),
    ("model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "Flux"),
    ("single_transformer_blocks.0.attn.to_q.weight", "Flux in diffusers' layout"),
    ("model.diffusion_model.x_embedder.proj.weight", "diffusion transformer"),
    ("text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight", "T5"),
    ("down_blocks.0.resnets.0.conv1.weight", "diffusers UNet"),
])
def test_other_families_are_refused_naming_what_was_found(tmp_path, key, found):
    path = tmp_path / "other.safetensors"
    save_file({key: torch.zeros(2, 2), "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, device="cpu")
    message = str(error.value)
    assert message.startswith(f"{path}: not a checkpoint nodegraph can run: this is ") and found in message
    assert key in message and "SD 1.x, SD 2.x, SDXL" in message


def test_a_file_mixing_an_sd2_unet_with_an_sd1_text_encoder_is_refused(tmp_path, tiny_config):
    narrow = dataclasses.replace(tiny_config, text=TextEncoderConfig(width=64, layers=2, mlp_width=128))
    sd1 = load_file(str(write_checkpoint(tmp_path / "sd1.safetensors", narrow)))
    state = {k: v for k, v in build_family_state_dict("sd2").items() if not k.startswith("cond_stage_model.")}
    state.update({k: v for k, v in sd1.items() if k.startswith("cond_stage_model.")})
    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"mixed\.safetensors: a mixed file: its UNet reads 128-wide text "
                                              r"states, but its SD 1\.x text encoders give 64 \(clip_l 64\)"):
        load_checkpoint(path, device="cpu")


def test_an_sdxl_file_without_its_second_text_encoder_is_refused_naming_the_part(tmp_path):
    state = {k: v for k, v in build_family_state_dict("sdxl").items() if not k.startswith("conditioner.embedders.1.")}
    path = tmp_path / "half.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"half\.safetensors: not a whole SDXL checkpoint: it has no "
                                              r"conditioner\.embedders\.1\.model\.\* keys"):
        load_checkpoint(path, device="cpu")


def test_a_truncated_sdxl_file_is_refused_naming_it(tmp_path):
    whole = write_family_checkpoint(tmp_path / "xl.safetensors", "sdxl")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: (not a readable \.safetensors file|cannot read)"):
        load_checkpoint(cut, device="cpu")


def test_an_sdxl_like_unet_with_an_unknown_adm_width_is_refused():
    state = build_family_state_dict("sdxl")
    state["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(256, 1000)
    with pytest.raises(FamilyError, match=r"1000-wide label_emb input, which fits neither SDXL"):
        detect_family(shapes_of(state))


def test_a_unet_of_unknown_input_channels_is_refused():
    state = build_family_state_dict("sd2")
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(64, 8, 3, 3)
    with pytest.raises(FamilyError, match=r"takes 8 input channels"):
        detect_family(shapes_of(state))


def full_size_shapes(parts: dict[str, torch.nn.Module]) -> dict:
    return {prefix + key: tensor for prefix, module in parts.items() for key, tensor in module.state_dict().items()}


def test_full_size_files_are_told_and_their_configs_read_back_on_the_meta_device():
    from bench.checkpoint import BIG_G, REFINER_UNET as REFINER, SD2_UNET, SDXL_UNET, VIT_H
    from nodegraph.sd.clip import TextEncoder
    from nodegraph.sd.openclip import OpenCLIPTextEncoder
    from nodegraph.sd.unet import UNet, UNetConfig
    from nodegraph.sd.vae import VAE, VAEConfig
    with torch.device("meta"):
        vae = VAE(VAEConfig())
        files = {
            SD2: {"model.diffusion_model.": UNet(SD2_UNET), "cond_stage_model.model.": OpenCLIPTextEncoder(VIT_H)},
            SDXL: {"model.diffusion_model.": UNet(SDXL_UNET), "conditioner.embedders.0.transformer.":
                   TextEncoder(TextEncoderConfig()), "conditioner.embedders.1.model.": OpenCLIPTextEncoder(BIG_G)},
            SDXL_REFINER: {"model.diffusion_model.": UNet(REFINER), "conditioner.embedders.0.model.":
                           OpenCLIPTextEncoder(BIG_G)},
        }
    for family, parts in files.items():
        shapes = full_size_shapes({**parts, "first_stage_model.": vae})
        assert detect_family(shapes) == family
        unet = {key[len("model.diffusion_model."):]: t for key, t in shapes.items() if key.startswith("model.diffusion_model.")}
        assert UNetConfig.from_state_dict(unet, head_size=family.head_size) == parts["model.diffusion_model."].config


def test_weighted_prompts_on_sdxl_weight_each_encoder_against_its_own_empty_prompt(tmp_path):
    """ComfyUI's weighting (z_empty + (z - z_empty) * w at weighted positions) runs per encoder: CLIP-L against its
    EOS-padded empty prompt, bigG against its 0-padded one, each at its own layer without the final norm."""
    from nodegraph.sd.conditioning import encode_text
    sd = load_checkpoint(write_family_checkpoint(tmp_path / "xl.safetensors", "sdxl"), device="cpu",
                         dtype=torch.float32)
    (encoded,) = encode_text(sd, "a (red:1.5) circle")
    tokens = sd.tokenizer.tokens
    red = len(tokens("a")) + 1  # after BOS and "a"
    expected = []
    for recipe in sd.family.text:
        encoder = sd.text_encoders[recipe.name]
        ids = torch.cat([sd.tokenizer(["a red circle"], pad_token=recipe.pad_token),
                         sd.tokenizer([""], pad_token=recipe.pad_token)])
        states, _ = encoder.from_embeddings(encoder.token_embeddings(ids), -2, False)
        z, empty = states[0], states[1]
        weighted = z.clone()
        weighted[red: red + len(tokens("red"))] = empty[red: red + len(tokens("red"))] + \
            (z[red: red + len(tokens("red"))] - empty[red: red + len(tokens("red"))]) * 1.5
        expected.append(weighted)
    torch.testing.assert_close(encoded.context[0], torch.cat(expected, dim=-1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(encoded.context, encode_text(sd, "a red circle")[0].context, atol=1e-3)
