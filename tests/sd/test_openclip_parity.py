"""SD 2.x's and SDXL's text encoders against transformers' CLIP text models, as diffusers' single-file conversion
builds them, on small random weights written in the real single-file layouts (fp32)."""

import pytest
import torch

from nodegraph.sd.clip import TextEncoder, TextEncoderConfig
from nodegraph.sd.openclip import OpenCLIPTextConfig, OpenCLIPTextEncoder
from tests.sd.parity import relative_error

SD2 = "cond_stage_model.model."
SDXL_L = "conditioner.embedders.0.transformer."
SDXL_G = "conditioner.embedders.1.model."
REFINER_G = "conditioner.embedders.0.model."
VOCAB, CONTEXT = 1000, 77
BOS, EOS = VOCAB - 2, VOCAB - 1  # EOS the largest id, as in the real vocabulary
TOLERANCE = 1e-4


def linear(file: dict, key: str, rows: int, columns: int, generator: torch.Generator) -> None:
    file[key + ".weight"] = torch.randn(rows, columns, generator=generator) / columns**0.5
    file[key + ".bias"] = 0.1 * torch.randn(rows, generator=generator)


def norm(file: dict, key: str, width: int, generator: torch.Generator) -> None:
    file[key + ".weight"] = 1 + 0.1 * torch.randn(width, generator=generator)
    file[key + ".bias"] = 0.1 * torch.randn(width, generator=generator)


def openclip_part(prefix: str, width: int, layers: int, mlp: int, projection: int | None, seed: int) -> dict:
    """An OpenCLIP text encoder's tensors as SD 2.x / SDXL files store them (open_clip's key names)."""
    g = torch.Generator().manual_seed(seed)
    file = {prefix + "token_embedding.weight": torch.randn(VOCAB, width, generator=g),
            prefix + "positional_embedding": 0.5 * torch.randn(CONTEXT, width, generator=g),
            prefix + "logit_scale": torch.tensor(4.6052)}
    for n in range(layers):
        block = f"{prefix}transformer.resblocks.{n}."
        norm(file, block + "ln_1", width, g)
        file[block + "attn.in_proj_weight"] = torch.randn(3 * width, width, generator=g) / width**0.5
        file[block + "attn.in_proj_bias"] = 0.1 * torch.randn(3 * width, generator=g)
        linear(file, block + "attn.out_proj", width, width, g)
        norm(file, block + "ln_2", width, g)
        linear(file, block + "mlp.c_fc", mlp, width, g)
        linear(file, block + "mlp.c_proj", width, mlp, g)
    norm(file, prefix + "ln_final", width, g)
    if projection is not None:
        file[prefix + "text_projection"] = torch.randn(width, projection, generator=g) / width**0.5
    return file


def clip_l_part(prefix: str, width: int, layers: int, mlp: int, seed: int) -> dict:
    """A CLIP-L text encoder's tensors as SD files store them (transformers' key names, no projection)."""
    g = torch.Generator().manual_seed(seed)
    model = prefix + "text_model."
    file = {model + "embeddings.token_embedding.weight": torch.randn(VOCAB, width, generator=g),
            model + "embeddings.position_embedding.weight": 0.5 * torch.randn(CONTEXT, width, generator=g),
            model + "embeddings.position_ids": torch.arange(CONTEXT).unsqueeze(0)}
    for n in range(layers):
        layer = f"{model}encoder.layers.{n}."
        norm(file, layer + "layer_norm1", width, g)
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(file, layer + "self_attn." + projection, width, width, g)
        norm(file, layer + "layer_norm2", width, g)
        linear(file, layer + "mlp.fc1", mlp, width, g)
        linear(file, layer + "mlp.fc2", width, mlp, g)
    norm(file, model + "final_layer_norm", width, g)
    return file


def part(file: dict, prefix: str) -> dict:
    return {key[len(prefix):]: tensor for key, tensor in file.items() if key.startswith(prefix)}


def ours(module_class, config_class, file: dict, prefix: str):
    """Built as the loader builds it: config from shapes, on the meta device, one strict load of the file's keys."""
    weights = part(file, prefix)
    with torch.device("meta"):
        module = module_class(config_class.from_state_dict(weights))
    module.load_state_dict(weights, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def reference(model_class, file: dict, tmp_path, name: str, **config):
    """transformers' model as diffusers' single-file loader makes it, from a local config (no hub)."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextConfig

    width = config["hidden_size"]
    CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=CONTEXT, num_attention_heads=width // 64,
                   bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0, **config).save_pretrained(tmp_path / name)
    return create_diffusers_clip_model_from_ldm(model_class, file, config=str(tmp_path / name)).float().eval()


def prompt_ids() -> torch.Tensor:
    """Two prompts as the SD 2.x / SDXL tokenizers give them: BOS, words, EOS, then padding (0 for OpenCLIP)."""
    g = torch.Generator().manual_seed(7)
    ids = torch.zeros(2, CONTEXT, dtype=torch.long)
    for row, length in enumerate((5, 30)):
        ids[row, 0], ids[row, length + 1] = BOS, EOS
        ids[row, 1:length + 1] = torch.randint(0, VOCAB - 2, (length,), generator=g)
    return ids


def first_eos(ids: torch.Tensor) -> torch.Tensor:
    return (ids == EOS).int().argmax(dim=-1)


def hf_outputs(model, ids):
    with torch.no_grad():
        return model(ids, output_hidden_states=True)


def check_every_layer(encoder, hidden_states, final_layer_norm, ids, layers: int) -> list[float]:
    """Our hidden layer -n (with and without the final norm) against transformers' hidden_states[-n]."""
    errors = []
    vectors = encoder.token_embeddings(ids)
    with torch.no_grad():
        for n in range(1, layers + 1):
            raw = encoder.from_embeddings(vectors, -n, layer_norm=False)[0]
            normed = encoder.from_embeddings(vectors, -n, layer_norm=True)[0]
            errors.append(relative_error(raw, hidden_states[-n]))
            errors.append(relative_error(normed, final_layer_norm(hidden_states[-n])))
    return errors


# --- SD 2.x: OpenCLIP ViT-H layout, read at layer -2 with the final norm ------------------------------------------


def test_sd2_text_encoder_matches_diffusers_sd2_conversion(tmp_path):
    # 24 blocks, as the real file: diffusers' SD 2.x converter drops resblocks.23 and text_projection, so its model
    # (23 layers, like stabilityai/stable-diffusion-2's text_encoder) ends where SD 2.x's default encoding reads.
    file = openclip_part(SD2, width=128, layers=24, mlp=256, projection=128, seed=0)
    encoder = ours(OpenCLIPTextEncoder, OpenCLIPTextConfig, file, SD2)
    from transformers import CLIPTextModel

    hf = reference(CLIPTextModel, file, tmp_path, "sd2", hidden_size=128, intermediate_size=256,
                   num_hidden_layers=23, hidden_act="gelu")
    ids = prompt_ids()
    expected = hf_outputs(hf, ids)
    with torch.no_grad():
        penultimate = encoder(ids, layer=-2)
    assert relative_error(penultimate, expected.last_hidden_state) <= TOLERANCE
    # our layers -24..-2 are transformers' 23 (its hidden_states[0] is the embeddings' output), with and without
    # the final norm
    errors = []
    vectors = encoder.token_embeddings(ids)
    with torch.no_grad():
        for index in range(23):
            for layer_norm, normed in ((False, lambda t: t), (True, hf.final_layer_norm)):
                state, _ = encoder.from_embeddings(vectors, index - 24, layer_norm=layer_norm)
                errors.append(relative_error(state, normed(expected.hidden_states[index + 1])))
    assert max(errors) <= TOLERANCE, max(errors)


def test_sd2_text_encoder_loads_real_file_keys_strictly():
    file = openclip_part(SD2, width=128, layers=3, mlp=256, projection=128, seed=1)
    encoder = ours(OpenCLIPTextEncoder, OpenCLIPTextConfig, file, SD2)
    assert set(encoder.state_dict()) == set(part(file, SD2))
    assert encoder.config == OpenCLIPTextConfig(vocab_size=VOCAB, context_length=CONTEXT, width=128, layers=3,
                                                mlp_width=256, projection_dim=128, logit_scale=True)
    assert encoder.config.heads == 2


# --- SDXL: OpenCLIP bigG (base and refiner layouts), CLIP-L --------------------------------------------------------


def sdxl_file() -> dict:
    # widths differ, as in the real file: diffusers tells its two encoders apart by width
    return {**clip_l_part(SDXL_L, width=64, layers=3, mlp=128, seed=2),
            **openclip_part(SDXL_G, width=192, layers=3, mlp=384, projection=160, seed=3)}


@pytest.mark.parametrize("layout", ["base", "refiner"])
def test_bigg_matches_transformers_with_projection(tmp_path, layout):
    from transformers import CLIPTextModelWithProjection

    file = sdxl_file()
    prefix = SDXL_G
    if layout == "refiner":  # the refiner's file holds bigG alone, as embedders.0
        file, prefix = {REFINER_G + key[len(SDXL_G):]: t for key, t in file.items() if key.startswith(SDXL_G)}, REFINER_G
    encoder = ours(OpenCLIPTextEncoder, OpenCLIPTextConfig, file, prefix)
    hf = reference(CLIPTextModelWithProjection, file, tmp_path, layout, hidden_size=192, intermediate_size=384,
                   num_hidden_layers=3, projection_dim=160, hidden_act="gelu")
    ids = prompt_ids()
    expected = hf_outputs(hf, ids)
    errors = check_every_layer(encoder, expected.hidden_states, hf.text_model.final_layer_norm, ids, 3)
    with torch.no_grad():
        _, last = encoder.from_embeddings(encoder.token_embeddings(ids), -2, layer_norm=False)
        pooled = encoder.project_pooled(last[torch.arange(2), first_eos(ids)])
    errors += [relative_error(last, expected.last_hidden_state), relative_error(pooled, expected.text_embeds)]
    assert pooled.shape == (2, 160)
    assert max(errors) <= TOLERANCE, errors


def test_sdxl_clip_l_penultimate_without_final_norm_matches_transformers(tmp_path):
    from transformers import CLIPTextModel

    file = sdxl_file()
    encoder = ours(TextEncoder, TextEncoderConfig, file, SDXL_L)
    hf = reference(CLIPTextModel, file, tmp_path, "clip_l", hidden_size=64, intermediate_size=128,
                   num_hidden_layers=3, hidden_act="quick_gelu")
    ids = prompt_ids()
    ids[ids == 0] = EOS  # CLIP-L pads with EOS
    expected = hf_outputs(hf, ids)
    with torch.no_grad():
        state, last = encoder.from_embeddings(encoder.token_embeddings(ids), -2, layer_norm=False)
    assert relative_error(state, expected.hidden_states[-2]) <= TOLERANCE
    assert relative_error(last, expected.last_hidden_state) <= TOLERANCE
    with torch.no_grad():  # without the norm it is not the normed state (the flag does something)
        assert relative_error(state, hf.final_layer_norm(expected.hidden_states[-2])) > 0.01
    errors = check_every_layer(encoder, expected.hidden_states, hf.final_layer_norm, ids, 3)
    assert max(errors) <= TOLERANCE, errors
    pooled = last[torch.arange(2), first_eos(ids)]
    assert encoder.project_pooled(pooled) is pooled  # SD files carry no CLIP-L projection


def test_sdxl_file_parts_load_strictly_under_their_prefixes():
    file = sdxl_file()
    clip_g = ours(OpenCLIPTextEncoder, OpenCLIPTextConfig, file, SDXL_G)
    clip_l = ours(TextEncoder, TextEncoderConfig, file, SDXL_L)
    assert {SDXL_G + key for key in clip_g.state_dict()} | {SDXL_L + key for key in clip_l.state_dict()} == set(file)
    assert (clip_g.config.width, clip_g.config.heads, clip_g.config.projection_dim) == (192, 3, 160)


# --- what the loader relies on --------------------------------------------------------------------------------------


def test_strict_load_names_a_missing_or_unexpected_key():
    weights = part(openclip_part(SD2, width=64, layers=2, mlp=128, projection=64, seed=4), SD2)
    with torch.device("meta"):
        encoder = OpenCLIPTextEncoder(OpenCLIPTextConfig.from_state_dict(weights))
    missing = {key: t for key, t in weights.items() if key != "transformer.resblocks.1.ln_2.bias"}
    with pytest.raises(RuntimeError, match=r"transformer\.resblocks\.1\.ln_2\.bias"):
        encoder.load_state_dict(missing, strict=True, assign=True)
    with pytest.raises(RuntimeError, match="attn_mask"):
        encoder.load_state_dict({**weights, "attn_mask": torch.zeros(77, 77)}, strict=True, assign=True)


def test_files_without_projection_or_logit_scale_load_and_pool_unprojected():
    weights = part(openclip_part(SD2, width=64, layers=2, mlp=128, projection=None, seed=5), SD2)
    del weights["logit_scale"]
    config = OpenCLIPTextConfig.from_state_dict(weights)
    assert (config.projection_dim, config.logit_scale) == (None, False)
    encoder = OpenCLIPTextEncoder(config)
    encoder.load_state_dict(weights, strict=True)
    state = torch.randn(2, 64)
    assert encoder.project_pooled(state) is state


def test_project_pooled_keeps_the_callers_dtype():
    weights = part(openclip_part(SD2, width=64, layers=1, mlp=128, projection=32, seed=6), SD2)
    encoder = ours(OpenCLIPTextEncoder, OpenCLIPTextConfig, weights, "").to(torch.bfloat16)
    state = torch.randn(2, 64)
    pooled = encoder.project_pooled(state)
    assert pooled.dtype == torch.float32 and pooled.shape == (2, 32)
    assert relative_error(pooled, state @ weights["text_projection"]) < 2e-2  # bf16 weights


@pytest.mark.parametrize("module_class,config_class,make", [
    (OpenCLIPTextEncoder, OpenCLIPTextConfig, lambda: part(openclip_part(SD2, 64, 3, 128, 64, seed=8), SD2)),
    (TextEncoder, TextEncoderConfig, lambda: part(clip_l_part(SDXL_L, 64, 3, 128, seed=9), SDXL_L)),
], ids=["openclip", "clip_l"])
def test_layers_are_counted_as_clip_set_last_layer_counts_them(module_class, config_class, make):
    encoder = ours(module_class, config_class, make(), "")
    assert [encoder.layer_index(layer) for layer in (-1, -2, -3)] == [2, 1, 0]
    for bad in (0, 1, -4):
        with pytest.raises(ValueError, match="clip layer"):
            encoder.layer_index(bad)
    ids = prompt_ids()
    with torch.no_grad():
        vectors = encoder.token_embeddings(ids)
        default, last = encoder.from_embeddings(vectors)
        assert torch.equal(default, last)  # layer -1 with the norm is the last layer
        assert torch.equal(encoder(ids), last)
        raw_last, _ = encoder.from_embeddings(vectors, -1, layer_norm=False)
        assert not torch.allclose(raw_last, last)
