"""Embeddings on SDXL, its refiner and SD 2.x, through the CLIPTextEncode node with an embeddings folder: an SDXL
file {"clip_l": [n, W_l], "clip_g": [n, W_g]} gives each encoder its own vectors, as diffusers' documented
load_textual_inversion on both tokenizers and encoders does; an SD 1.x file (one CLIP-L-wide tensor) is refused on
SDXL naming the file, since bigG cannot take it (ComfyUI logs a warning and leaves it out of bigG's half)."""

import warnings

import pytest
import torch
from diffusers.loaders import TextualInversionLoaderMixin
from safetensors.torch import load_file, save_file

from checkpoints import TINY_BIGG, TINY_CLIP_L, TINY_OPENCLIP, write_family_checkpoint
from engine_fixtures import folders_env
from nodegraph.nodes import RunContext, builtin_registry
from nodegraph.sd import load_checkpoint
from nodegraph.sd.tokenizer import BOS, EOS

NAME = "xl-style"
TOLERANCE = 1e-4


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def vectors(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    out = {}
    for family in ("sdxl", "sdxl_refiner", "sd2"):
        path = write_family_checkpoint(folder / f"{family}.safetensors", family, seed=8)
        out[family] = (path, load_checkpoint(path, device="cpu", dtype=torch.float32))
    return out


def encode_node(env, clip, text: str):
    """(the CLIPTextEncode node's one cond, warnings)."""
    seen = []
    ctx = RunContext(env, "encode", {}, warn=seen.append)
    (encoded,) = builtin_registry().get_comfy("CLIPTextEncode")().run(ctx, text=text, clip=clip)["CONDITIONING"]
    return encoded, seen


def env_with(tmp_path, files: dict):
    env = folders_env(tmp_path / "root")
    for name, tensors in files.items():
        (env.models_dir / "embeddings").mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(env.models_dir / "embeddings" / name))
    return env


# --- by the formula: the embedding's vectors in its slots, for each encoder ----------------------------------------


def by_formula(sd, words_before: str, slots: dict, words_after: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, pooled) of `before <slots> after` without weights, each encoder reading its own vectors (`slots`:
    encoder -> [n, W]) in the slots, at the family's layer, joined on the feature axis."""
    contexts, pooled = [], None
    for recipe in sd.family.text:
        encoder, own = sd.text_encoders[recipe.name], slots[recipe.name]
        before, after = sd.tokenizer.tokens(words_before), sd.tokenizer.tokens(words_after)
        ids = [BOS] + before + [EOS] * len(own) + after + [EOS]
        ids = torch.tensor([ids + [recipe.pad_token] * (77 - len(ids))])
        inputs = encoder.token_embeddings(ids)
        start = 1 + len(before)
        inputs[0, start:start + len(own)] = own
        with torch.no_grad():
            state, last = encoder.from_embeddings(inputs, sd.text_layer(recipe.name), recipe.layer_norm)
        contexts.append(state)
        pooled = encoder.project_pooled(last[:, start + len(own) + len(after)])
    return torch.cat(contexts, dim=-1), pooled


@pytest.mark.parametrize("family", ["sdxl", "sdxl_refiner", "sd2"])
def test_each_encoder_reads_its_own_vectors_of_a_family_embedding(models, tmp_path, family):
    _, sd = models[family]
    clip_l, clip_g = vectors(3, TINY_CLIP_L.width, seed=1), vectors(3, TINY_BIGG.width, seed=2)
    if family == "sd2":  # SD 2.x files are one tensor, as SD 1.x's, OpenCLIP-H wide
        clip_h = vectors(3, TINY_OPENCLIP.width, seed=3)
        files, slots = {f"{NAME}.safetensors": {"emb_params": clip_h}}, {"clip_h": clip_h}
    else:
        files = {f"{NAME}.safetensors": {"clip_g": clip_g, "clip_l": clip_l}}
        slots = {"clip_l": clip_l, "clip_g": clip_g}
    encoded, seen = encode_node(env_with(tmp_path, files), sd, f"a embedding:{NAME} red circle")
    context, pooled = by_formula(sd, "a", slots, "red circle")
    plain, _ = encode_node(env_with(tmp_path / "none", {}), sd, "a red circle")
    print(f"{family}: context {relative_error(encoded.context, context):.1e}, "
          f"pooled {relative_error(encoded.pooled, pooled):.1e}")
    assert seen == []
    assert encoded.context.shape == context.shape == (1, 77, sum(e.config.width for e in sd.text_encoders.values()))
    assert relative_error(encoded.context, context) <= 1e-6 and relative_error(encoded.pooled, pooled) <= 1e-6
    assert relative_error(plain.context[:, :5], context[:, :5]) > 0.01, "the embedding should change the encoding"


# --- against diffusers' load_textual_inversion on both of SDXL's encoders ------------------------------------------


class DiffusersHost(TextualInversionLoaderMixin):
    """The least of a pipeline that load_textual_inversion needs."""

    hf_device_map = None
    components = {}


def diffusers_sdxl_text(state: dict, folder):
    """SDXL's two text encoders as diffusers' single-file loader builds them, and its two tokenizers (bigG's pads
    with "!", id 0)."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from nodegraph.sd.tokenizer import VOCAB_DIR
    models = []
    for name, config, model_class, act, pad in (("l", TINY_CLIP_L, CLIPTextModel, "quick_gelu", EOS),
                                                ("g", TINY_BIGG, CLIPTextModelWithProjection, "gelu", 0)):
        extra = {"projection_dim": config.projection_dim} if name == "g" else {}
        CLIPTextConfig(vocab_size=config.vocab_size, max_position_embeddings=77, hidden_size=config.width,
                       intermediate_size=config.mlp_width, num_hidden_layers=config.layers,
                       num_attention_heads=config.heads, hidden_act=act, bos_token_id=BOS, eos_token_id=EOS,
                       pad_token_id=pad, **extra).save_pretrained(folder / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models.append(create_diffusers_clip_model_from_ldm(model_class, state, config=str(folder / name)).eval())
    vocab, merges = str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt")
    tokenizers = (CLIPTokenizer(vocab, merges, model_max_length=77),
                  CLIPTokenizer(vocab, merges, model_max_length=77, pad_token="!"))
    return models, tokenizers


def test_sdxl_embedding_matches_diffusers_load_textual_inversion_on_both_encoders(models, tmp_path):
    path, sd = models["sdxl"]
    clip_l, clip_g = vectors(2, TINY_CLIP_L.width, seed=4), vectors(2, TINY_BIGG.width, seed=5)
    env = env_with(tmp_path, {f"{NAME}.safetensors": {"clip_l": clip_l, "clip_g": clip_g}})
    # diffusers reads no weights: the parentheses are escaped, literal text for both
    encoded, seen = encode_node(env, sd, f"a embedding:{NAME} red circle, \\(blue square\\)")
    (text_l, text_g), (tokenizer_l, tokenizer_g) = diffusers_sdxl_text(load_file(str(path)), tmp_path)
    host = DiffusersHost()  # as diffusers' docs load an SDXL embedding: each half into its encoder, one token
    host.load_textual_inversion(clip_l, token="<xl>", tokenizer=tokenizer_l, text_encoder=text_l)
    host.load_textual_inversion(clip_g, token="<xl>", tokenizer=tokenizer_g, text_encoder=text_g)
    errors = {}
    with torch.no_grad():
        states = []
        for tokenizer, model in ((tokenizer_l, text_l), (tokenizer_g, text_g)):
            text = host.maybe_convert_prompt("a <xl> red circle, (blue square)", tokenizer)  # <xl> <xl>_1
            ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            output = model(ids, output_hidden_states=True)
            states.append(output.hidden_states[-2])  # SDXL's layer, without the final norm
        expected = torch.cat(states, dim=-1)
        errors["context"] = relative_error(encoded.context, expected)
        errors["pooled"] = relative_error(encoded.pooled, output.text_embeds)
    print("sdxl embedding vs diffusers: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert seen == [] and max(errors.values()) <= TOLERANCE, errors


# --- an SD 1.x embedding on SDXL -----------------------------------------------------------------------------------


def test_an_sd1_embedding_on_sdxl_reaches_clip_l_and_is_left_out_of_bigg_with_a_warning(models, tmp_path):
    """One CLIP-L-wide tensor fits SDXL's CLIP-L but not bigG: as ComfyUI ("shape mismatch ... embedding will be
    ignored"), CLIP-L reads it and bigG's reading of the prompt goes without it, with a warning naming both."""
    _, sd = models["sdxl"]
    style = vectors(2, TINY_CLIP_L.width, seed=6)
    env = env_with(tmp_path, {"sd15-style.safetensors": {"emb_params": style}})
    encoded, warnings = encode_node(env, sd, "a embedding:sd15-style red circle")
    assert len(warnings) == 1
    assert f"has {TINY_CLIP_L.width}-wide vectors, but the clip_g encoder takes {TINY_BIGG.width}" in warnings[0]
    assert "left out of that encoder's reading of the prompt" in warnings[0]
    # CLIP-L's half is the prompt with the embedding, bigG's the prompt without it
    with_style, _ = encode_node(env_with(tmp_path / "both", {"x.safetensors": {
        "clip_l": style, "clip_g": vectors(2, TINY_BIGG.width, seed=7)}}), sd, "a embedding:x red circle")
    without, _ = encode_node(env, sd, "a red circle")
    width = TINY_CLIP_L.width
    assert torch.equal(encoded.context[..., :width], with_style.context[..., :width])
    assert torch.equal(encoded.context[..., width:], without.context[..., width:])
