"""LoRAs on SD 2.x, SDXL and the SDXL refiner: every spelling the trainers use for their layers (kohya's
lora_te1_/lora_te2_/lora_te_ and LDM or diffusers UNet names, diffusers/peft's text_encoder_2.), on the tiny family
checkpoints, against W + s*(alpha/rank)*up@down per layer and against diffusers' load_lora_weights + fuse_lora.

The layer names of the files are found here without nodegraph.sd.lora's tables: diffusers' names by diffusers' own
single-file conversion (each random tensor is unique, so the converted tensor equal to one of the file's names that
layer; a q/k/v projection of OpenCLIP's layout is equal to a row block of the file's attn.in_proj_weight)."""

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lora_files as lf
from checkpoints import FAMILY_UNETS, TINY_BIGG, TINY_CLIP_L, TINY_OPENCLIP, write_family_checkpoint
from nodegraph.nodes import Environment, RunContext
from nodegraph.sd import load_checkpoint
from nodegraph.sd.adm import sdxl_adm
from nodegraph.sd.lora import LoraError, match_lora, patch_module, read_lora_file
from nodegraph.sd.lora.keys import diffusers_unet_blocks, unet_lora_names
from nodegraph.sd.unet import UNet
from parity import relative_error

UNET_PREFIX = "model.diffusion_model."
TEXT_PREFIXES = {  # family -> {encoder name: its prefix in the file}
    "sd2": {"clip_h": "cond_stage_model.model."},
    "sdxl": {"clip_l": "conditioner.embedders.0.transformer.", "clip_g": "conditioner.embedders.1.model."},
    "sdxl_refiner": {"clip_g": "conditioner.embedders.0.model."},
}
TEXT_CONFIGS = {"clip_l": TINY_CLIP_L, "clip_h": TINY_OPENCLIP, "clip_g": TINY_BIGG}
# The layers LoRA trainers adapt, as lora_files.py has them for SD 1.x, plus SDXL's label_emb linears
UNET_TARGET = re.compile(lf.UNET_TARGET.pattern[:-2] + r"|label_emb\.0\.[02])$")
TEXT_TARGET = lf.TEXT_TARGET
KOHYA_TEXT = {("sdxl", "clip_l"): "lora_te1_", ("sdxl", "clip_g"): "lora_te2_", ("sd2", "clip_h"): "lora_te_",
              ("sdxl_refiner", "clip_g"): "lora_te_"}
PEFT_TEXT = {("sdxl", "clip_l"): "text_encoder.", ("sdxl", "clip_g"): "text_encoder_2.",
             ("sd2", "clip_h"): "text_encoder.", ("sdxl_refiner", "clip_g"): "text_encoder."}
STRENGTH = 0.7
TOLERANCE = 1e-4


# --- the tiny family checkpoints and diffusers' view of them --------------------------------------------------------


def ldm_unet_params(family: str) -> dict:
    config = FAMILY_UNETS[family]
    levels, blocks = len(config.channel_mult), config.num_res_blocks
    return {"in_channels": 4, "out_channels": 4, "model_channels": config.model_channels,
            "attention_resolutions": [2 ** level for level in config.attention_levels], "num_res_blocks": blocks,
            "channel_mult": list(config.channel_mult), "context_dim": config.context_dim,
            "transformer_depth": config.transformer_depth if config.transformer_depth_input is None else
            [config.input_depths[level * blocks] for level in range(levels)],
            "use_linear_in_transformer": True, "num_head_channels": 64}


def diffusers_unet(family: str, state: dict):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    original = {"model": {"params": {"unet_config": {"params": ldm_unet_params(family)},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 2, 2]}}}}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = sfu.create_unet_diffusers_config_from_ldm(original, state, image_size=64)
    adm = FAMILY_UNETS[family].adm_in_channels
    if adm:  # diffusers tells SDXL by its real context widths only
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256, class_embed_type=None,
                      projection_class_embeddings_input_dim=adm)
    unet = UNet2DConditionModel(**config)
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(state, config), strict=True)
    return unet.eval()


def diffusers_text_encoder(name: str, state: dict, folder: Path):
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = TEXT_CONFIGS[name]
    model_class = CLIPTextModelWithProjection if name == "clip_g" else CLIPTextModel
    extra = {"projection_dim": config.projection_dim} if name == "clip_g" else {}
    CLIPTextConfig(vocab_size=config.vocab_size, max_position_embeddings=config.context_length,
                   hidden_size=config.width, intermediate_size=config.mlp_width, num_hidden_layers=config.layers,
                   num_attention_heads=config.heads, hidden_act="quick_gelu" if name == "clip_l" else "gelu",
                   bos_token_id=49406, eos_token_id=49407, pad_token_id=49407 if name == "clip_l" else 0,
                   **extra).save_pretrained(folder / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_diffusers_clip_model_from_ldm(model_class, state, config=str(folder / name)).float().eval()


@dataclasses.dataclass
class Family:
    name: str
    path: Path
    state: dict  # the file's tensors, float32
    sd: object  # our model
    unet_names: dict  # our UNet module path -> diffusers' path
    text_layers: dict  # encoder -> {transformers' module path: (our parameter, rows or None)}
    references: tuple  # (diffusers' UNet, {encoder: transformers' model})


def equal_tensor_names(ours: dict, converted: dict) -> dict:
    """converted key -> (our key, rows): the tensor of ours equal to it, whole or as a row block."""
    found = {}
    for key, tensor in converted.items():
        same = [(name, None) for name, t in ours.items() if t.shape == tensor.shape and torch.equal(t, tensor)]
        if not same:
            for name, t in ours.items():
                if t.ndim == tensor.ndim and t.shape[1:] == tensor.shape[1:] and t.shape[0] > tensor.shape[0]:
                    for start in range(0, t.shape[0], tensor.shape[0]):
                        if torch.equal(t[start:start + tensor.shape[0]], tensor):
                            same.append((name, (start, start + tensor.shape[0])))
        assert len(same) == 1, f"{key}: {len(same)} equal tensors in the checkpoint"
        found[key] = same[0]
    return found


def family_models(name: str, folder: Path) -> Family:
    path = write_family_checkpoint(folder / f"{name}.safetensors", name, seed=5)
    state = load_file(str(path))
    sd = load_checkpoint(path, device="cpu", dtype=torch.float32)
    unet = diffusers_unet(name, state)
    ours = {k[len(UNET_PREFIX):-len(".weight")]: t for k, t in state.items()
            if k.startswith(UNET_PREFIX) and k.endswith(".weight")}
    theirs = {k[:-len(".weight")]: t for k, t in unet.state_dict().items() if k.endswith(".weight")}
    unet_names = {ours_key: key for key, (ours_key, _) in equal_tensor_names(ours, theirs).items()}
    encoders, text_layers = {}, {}
    for encoder, prefix in TEXT_PREFIXES[name].items():
        model = diffusers_text_encoder(encoder, state, folder)
        encoders[encoder] = model
        file_part = {k[len(prefix):]: t for k, t in state.items() if k.startswith(prefix) and t.ndim == 2}
        # transformers 5's CLIPTextModel has no text_model level: LoRA files still name it (trainers used 4.x)
        weights = {("" if k.startswith("text_model.") else "text_model.") + k[:-len(".weight")]: t
                   for k, t in model.state_dict().items() if k.endswith(".weight") and TEXT_TARGET.search(k[:-7])}
        text_layers[encoder] = equal_tensor_names(file_part, weights)
    return Family(name, path, state, sd, unet_names, text_layers, (unet, encoders))


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    return {name: family_models(name, folder) for name in ("sd2", "sdxl", "sdxl_refiner")}


# --- LoRA files for them --------------------------------------------------------------------------------------------


def lora_entries(family: Family, unet_format: str, text_format: str, alpha, seed: int = 0, encoders=None,
                 label_emb: bool = True):
    """{file base name: Entry} over every target layer, and {(part, our parameter): [(rows, Entry)]}."""
    generator = torch.Generator().manual_seed(seed)
    pick_alpha = (lambda: None) if alpha is None else (
        (lambda: float(torch.randint(1, 9, (1,), generator=generator))) if alpha == "per module" else (lambda: alpha))
    entries, changes = {}, {}
    for path in sorted(family.unet_names):
        if not UNET_TARGET.search(path) or (not label_emb and path.startswith("label_emb.")):
            continue
        diffusers = family.unet_names[path]
        base = {"kohya": "lora_unet_" + path.replace(".", "_"),
                "kohya, diffusers names": "lora_unet_" + diffusers.replace(".", "_"),
                "peft": "unet." + diffusers}[unet_format]
        entry = lf.lora(family.state[UNET_PREFIX + path + ".weight"].float(), generator, rank=4, alpha=pick_alpha())
        entries[base] = entry
        changes.setdefault(("unet", path + ".weight"), []).append((None, entry))
    for encoder, layers in family.text_layers.items():
        if encoders is not None and encoder not in encoders:
            continue
        prefix = TEXT_PREFIXES[family.name][encoder]
        for hf_path, (ours, rows) in sorted(layers.items()):
            weight = family.state[prefix + ours].float()
            weight = weight if rows is None else weight[rows[0]:rows[1]]
            base = (KOHYA_TEXT[family.name, encoder] + hf_path.replace(".", "_") if text_format == "kohya"
                    else PEFT_TEXT[family.name, encoder] + hf_path)
            entry = lf.lora(weight, generator, rank=4, alpha=pick_alpha())
            entries[base] = entry
            changes.setdefault((encoder, ours), []).append((rows, entry))
    return entries, changes


def expected_weight(family: Family, part: str, name: str, changes) -> torch.Tensor:
    prefix = UNET_PREFIX if part == "unet" else TEXT_PREFIXES[family.name][part]
    weight = family.state[prefix + name].float().clone()
    for rows, entry in changes:
        if rows is None:
            weight = entry.expected(weight, STRENGTH)
        else:
            weight[rows[0]:rows[1]] = entry.expected(weight[rows[0]:rows[1]], STRENGTH)
    return weight


def patched(family: Family, path: Path):
    """(our UNet, {encoder: module}) with the LoRA at STRENGTH, and the match."""
    sd = family.sd
    patches = match_lora(path, read_lora_file(path), sd.unet, sd.text_encoders)
    encoders = {name: patch_module(module, patches.text_encoders[name], STRENGTH)
                for name, module in sd.text_encoders.items()}
    return patch_module(sd.unet, patches.unet, STRENGTH), encoders, patches


def dense(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.to_dense() if parameter.is_mkldnn else parameter


def check_against_formula(family: Family, unet, encoders, changes) -> int:
    """Every parameter the file changes is W + s*(alpha/r)*up@down (only its rows for a q/k/v block); every other
    one is the loaded model's own tensor. Returns how many were checked."""
    modules = {"unet": (family.sd.unet, unet)} | {n: (family.sd.text_encoders[n], m) for n, m in encoders.items()}
    checked = 0
    for part, (base, view) in modules.items():
        base_parameters = dict(base.named_parameters())
        for name, parameter in view.named_parameters():
            if (part, name) in changes:
                expected = expected_weight(family, part, name, changes[part, name])
                error = relative_error(dense(parameter).reshape(expected.shape), expected)
                assert error <= 1e-6, f"{part} {name}: {error:.2e}"
                checked += 1
            else:
                assert parameter is base_parameters[name], f"{part} {name} changed"
    assert checked == len(changes)
    return checked


FORMULA_CASES = {  # family, UNet names, text-encoder names, alpha, file's factor spelling
    "sdxl kohya (lora_te1_/lora_te2_, LDM names)": ("sdxl", "kohya", "kohya", "per module", "kohya"),
    "sdxl kohya, diffusers names": ("sdxl", "kohya, diffusers names", "kohya", "per module", "kohya"),
    "sdxl peft (unet./text_encoder./text_encoder_2.)": ("sdxl", "peft", "peft", None, "peft"),
    "sd2 kohya (lora_te_ on OpenCLIP-H)": ("sd2", "kohya", "kohya", "per module", "kohya"),
    "sd2 peft": ("sd2", "peft", "peft", None, "peft"),
    "refiner kohya (lora_te_ on bigG)": ("sdxl_refiner", "kohya", "kohya", "per module", "kohya"),
    "refiner diffusers names": ("sdxl_refiner", "kohya, diffusers names", "peft", 2.0, "diffusers"),
}


@pytest.mark.parametrize("case", list(FORMULA_CASES))
def test_every_layer_changes_by_the_formula(families, tmp_path, case):
    name, unet_format, text_format, alpha, style = FORMULA_CASES[case]
    family = families[name]
    entries, changes = lora_entries(family, unet_format, text_format, alpha)
    path = lf.write_lora(tmp_path / "lora.safetensors", entries, style=style)
    unet, encoders, patches = patched(family, path)
    assert patches.unmatched == ()
    assert list(patches.text_encoders) == list(family.sd.text_encoders)
    checked = check_against_formula(family, unet, encoders, changes)
    blocks = sum(len(c) for c in changes.values())
    print(f"{case}: {len(entries)} entries, {checked} parameters ({blocks} blocks) as the formula says")


def test_a_q_projection_lora_changes_only_its_rows_of_in_proj_weight(families, tmp_path):
    """q and v of one OpenCLIP layer (k left out), a bias difference on v, DoRA on q: the k rows stay bit for bit."""
    family = families["sdxl"]
    prefix, width = TEXT_PREFIXES["sdxl"]["clip_g"], TINY_BIGG.width
    weight = family.state[prefix + "transformer.resblocks.1.attn.in_proj_weight"].float()
    bias = family.state[prefix + "transformer.resblocks.1.attn.in_proj_bias"].float()
    generator = torch.Generator().manual_seed(4)
    q = lf.dora(weight[:width], generator, rank=4, alpha=2.0)
    v = lf.lora(weight[2 * width:], generator, rank=2, alpha=1.0)
    v_bias = 0.1 * torch.randn(width, generator=generator)
    v.parts[".diff_b"] = v_bias
    path = lf.write_lora(tmp_path / "qv.safetensors", {
        "lora_te2_text_model_encoder_layers_1_self_attn_q_proj": q,
        "lora_te2_text_model_encoder_layers_1_self_attn_v_proj": v})
    _, encoders, patches = patched(family, path)
    assert patches.unmatched == () and not patches.unet and not patches.text_encoders["clip_l"]
    assert set(patches.text_encoders["clip_g"]) == {"transformer.resblocks.1.attn.in_proj_weight",
                                                    "transformer.resblocks.1.attn.in_proj_bias"}
    attention = encoders["clip_g"].transformer.resblocks[1].attn
    new_weight, new_bias = attention.in_proj_weight, attention.in_proj_bias
    assert torch.equal(new_weight[width:2 * width], weight[width:2 * width])  # k: not touched
    assert torch.equal(new_bias[:2 * width], bias[:2 * width])
    assert relative_error(new_weight[:width], q.expected(weight[:width], STRENGTH)) <= 1e-6
    assert relative_error(new_weight[2 * width:], v.expected(weight[2 * width:], STRENGTH)) <= 1e-6
    assert relative_error(new_bias[2 * width:], bias[2 * width:] + STRENGTH * v_bias) <= 1e-6
    assert relative_error(new_weight[:width], weight[:width]) > 1e-3  # DoRA did change q


def test_bigg_text_projection_lora_changes_the_transposed_projection(families, tmp_path):
    """OneTrainer's lora_te2_text_projection names transformers' text_projection linear [proj, width]; the file
    (and our module) keep OpenCLIP's [width, proj], its transpose."""
    family = families["sdxl"]
    projection = family.state[TEXT_PREFIXES["sdxl"]["clip_g"] + "text_projection"].float()
    entry = lf.lora(projection.t(), torch.Generator().manual_seed(6), rank=4, alpha=3.0)
    path = lf.write_lora(tmp_path / "projection.safetensors", {"lora_te2_text_projection": entry})
    _, encoders, patches = patched(family, path)
    assert patches.unmatched == ()
    assert relative_error(encoders["clip_g"].text_projection, entry.expected(projection.t(), STRENGTH).t()) <= 1e-6


def test_two_entries_for_the_same_rows_are_refused(families, tmp_path):
    family = families["sd2"]
    weight = family.state["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].float()[:128]
    generator = torch.Generator().manual_seed(1)
    path = lf.write_lora(tmp_path / "twice.safetensors", {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": lf.lora(weight, generator),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": lf.lora(weight, generator)})
    with pytest.raises(LoraError, match="both change transformer.resblocks.0.attn.in_proj_weight"):
        patched(family, path)


# --- against diffusers ------------------------------------------------------------------------------------------


def diffusers_fused(family: Family, path: Path):
    """diffusers' UNet and text encoders with the file loaded and fused at STRENGTH (copies: the fixture's stay)."""
    import copy

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    unet, encoders = copy.deepcopy(family.references)
    if family.name == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=None, text_encoder=encoders["clip_l"], text_encoder_2=encoders["clip_g"],
                                         tokenizer=None, tokenizer_2=None, unet=unet, scheduler=None)
    else:
        pipe = StableDiffusionPipeline(vae=None, text_encoder=next(iter(encoders.values())), tokenizer=None,
                                       unet=unet, scheduler=None, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora(lora_scale=STRENGTH)
    return unet, encoders


def unet_inputs(family: Family):
    config = family.sd.unet.config
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, config.context_dim, generator=generator)
    t = torch.tensor([901, 33])
    if not config.adm_in_channels:
        return (x, t, context), {"encoder_hidden_states": context}
    pooled = torch.randn(2, 1280, generator=generator)
    sizes = {"height": 64, "width": 48, "crop_h": 0, "crop_w": 8, "target_height": 64, "target_width": 48}
    time_ids = torch.tensor([list(sizes.values())] * 2, dtype=torch.float32)
    return (x, t, context, sdxl_adm(pooled, **sizes)), {
        "encoder_hidden_states": context, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


PARITY_CASES = {  # the formats diffusers loads for these families, one alpha for all modules (REFERENCE.md)
    "sdxl kohya, LDM names": ("sdxl", "kohya", "kohya", 2.0, "kohya", True),
    # diffusers' kohya converter leaves lora_unet_add_embedding_* out (the formula test covers them)
    "sdxl kohya, diffusers names": ("sdxl", "kohya, diffusers names", "kohya", 2.0, "kohya", False),
    "sdxl peft": ("sdxl", "peft", "peft", None, "peft", True),
    "sd2 kohya, diffusers names": ("sd2", "kohya, diffusers names", "kohya", 2.0, "kohya", True),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_lora_matches_diffusers_fused(families, tmp_path, case):
    name, unet_format, text_format, alpha, style, label_emb = PARITY_CASES[case]
    family = families[name]
    entries, _ = lora_entries(family, unet_format, text_format, alpha, seed=9, label_emb=label_emb)
    path = lf.write_lora(tmp_path / "lora.safetensors", entries, style=style)
    unet, encoders, patches = patched(family, path)
    assert patches.unmatched == ()
    their_unet, their_encoders = diffusers_fused(family, path)
    ours_args, their_kwargs = unet_inputs(family)
    errors = {}
    with torch.no_grad():
        expected = their_unet(*ours_args[:2], **their_kwargs).sample
        errors["unet"] = relative_error(unet(*ours_args[:3], **({"y": ours_args[3]} if len(ours_args) > 3 else {})),
                                        expected)
        unpatched = family.sd.unet(*ours_args[:3], **({"y": ours_args[3]} if len(ours_args) > 3 else {}))
        assert relative_error(unpatched, expected) > 0.02, "the LoRA should change the UNet's answer"
        for encoder, module in encoders.items():
            pad = 0 if encoder != "clip_l" else None
            ids = family.sd.tokenizer(["a red circle on a white background", "an astronaut"],
                                      **({} if pad is None else {"pad_token": pad}))
            output = their_encoders[encoder](ids, output_hidden_states=True)
            state, last = module.from_embeddings(module.token_embeddings(ids), -2, layer_norm=False)
            errors[encoder + " layer -2"] = relative_error(state, output.hidden_states[-2])
            errors[encoder + " last"] = relative_error(last, output.last_hidden_state)
            base_state, _ = family.sd.text_encoders[encoder].from_embeddings(module.token_embeddings(ids), -2, False)
            assert relative_error(base_state, output.hidden_states[-2]) > 0.02, "the LoRA should change the encoding"
            if encoder == "clip_g":
                eos = (ids == 49407).int().argmax(dim=-1)
                errors["clip_g pooled"] = relative_error(module.project_pooled(last[torch.arange(2), eos]),
                                                         output.text_embeds)
    print(f"{case}: " + ", ".join(f"{part} {error:.1e}" for part, error in errors.items()))
    assert max(errors.values()) <= TOLERANCE, errors


# --- files of another family -------------------------------------------------------------------------------------


def refusal(family_sd, path: Path) -> str:
    with pytest.raises(LoraError) as caught:
        match_lora(path, read_lora_file(path), family_sd.unet, family_sd.text_encoders)
    assert str(path) in str(caught.value)
    return caught.value.problem


def sd1_lora(tiny_checkpoint, path: Path) -> Path:
    weights = lf.base_weights(tiny_checkpoint)
    generator = torch.Generator().manual_seed(3)
    return lf.write_lora(path, {lf.kohya_name(part, layer): lf.lora(weights[part][layer], generator, alpha=4.0)
                                for part, layers in lf.targets(weights).items() for layer in layers})


@pytest.mark.parametrize("name", ["sdxl", "sd2", "sdxl_refiner"])
def test_an_sd1_lora_is_refused_on_the_other_families(families, tiny_checkpoint, tmp_path, name):
    problem = refusal(families[name].sd, sd1_lora(tiny_checkpoint, tmp_path / "sd15-style.safetensors"))
    label = {"sdxl": "SDXL", "sd2": "SD 2.x", "sdxl_refiner": "SDXL refiner"}[name]
    assert f"do not fit this {label} model, so the LoRA was made for another model" in problem, problem


def test_an_sdxl_lora_is_refused_on_sd1_sd2_and_the_refiner(families, sd, tmp_path):
    entries, _ = lora_entries(families["sdxl"], "kohya", "kohya", 2.0)
    path = lf.write_lora(tmp_path / "xl-style.safetensors", entries)
    assert "for a second text encoder, which this SD 1.x model does not have (an SDXL LoRA?)" in refusal(sd, path)
    assert "which this SD 2.x model does not have" in refusal(families["sd2"].sd, path)
    assert "which this SDXL refiner model does not have" in refusal(families["sdxl_refiner"].sd, path)
    # UNet-only SDXL files give themselves away by their shapes
    unet_only = lf.write_lora(tmp_path / "xl-unet.safetensors",
                              {base: e for base, e in entries.items() if base.startswith("lora_unet_")})
    assert "do not fit this SD 1.x model" in refusal(sd, unet_only)


def test_comfyuis_generic_names_for_an_encoder_the_model_lacks_are_refused(families, tmp_path):
    weight = families["sdxl"].state["conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"]
    path = lf.write_lora(tmp_path / "generic.safetensors", {
        "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1": lf.lora(
            weight.float(), torch.Generator().manual_seed(0))})
    assert match_lora(path, read_lora_file(path), None, families["sdxl"].sd.text_encoders).text_encoders["clip_l"]
    assert "for clip_l, which this SD 2.x model does not have" in refusal(families["sd2"].sd, path)


# --- key tables ----------------------------------------------------------------------------------------------------


def test_sdxl_label_emb_and_a_middle_block_without_transformer_have_diffusers_names():
    """Distilled SDXL UNets drop the middle transformer: the middle block is then diffusers' UNetMidBlock2D, two res
    blocks; label_emb is diffusers' add_embedding."""
    config = dataclasses.replace(FAMILY_UNETS["sdxl"], transformer_depth_middle=0)
    with torch.device("meta"):
        unet = UNet(config)
    assert [type(m).__name__ for m in unet.middle_block] == ["ResBlock", "ResBlock"]
    blocks = diffusers_unet_blocks(config)
    assert blocks["middle_block.1"] == "mid_block.resnets.1" and "mid_block.attentions.0" not in blocks.values()
    names = unet_lora_names(unet)
    assert names["lora_unet_mid_block_resnets_1_conv1"] == "middle_block.1.in_layers.2"
    assert names["unet.add_embedding.linear_1"] == "label_emb.0.0"
    assert names["lora_unet_add_embedding_linear_2"] == "label_emb.0.2"
    # input block 1 has no transformer (depth 0 at SDXL's first level): no attention name for it
    assert not any(name.startswith("lora_unet_down_blocks_0_attentions") for name in names)


# --- the LoraLoader node ---------------------------------------------------------------------------------------------


def test_lora_loader_patches_both_sdxl_text_encoders(families, tmp_path):
    from nodegraph.nodes.lora import LOADED, LoraLoader, LoraLoaderModelOnly

    family = families["sdxl"]
    entries, changes = lora_entries(family, "kohya", "kohya", "per module")
    env = Environment(models_dir=tmp_path / "models")
    lf.write_lora(env.models_dir / "loras" / "xl.safetensors", entries)
    LOADED.clear()
    warnings_seen = []
    ctx = RunContext(env, "lora", {}, warn=warnings_seen.append)
    sd = family.sd
    out = LoraLoader().run(ctx, model=sd, clip=sd, lora_name="xl.safetensors", strength_model=STRENGTH,
                           strength_clip=STRENGTH)
    model, clip = out["MODEL"], out["CLIP"]
    assert warnings_seen == []
    assert model.text_encoders == sd.text_encoders and clip.unet is sd.unet
    assert all(clip.text_encoders[name] is not sd.text_encoders[name] for name in ("clip_l", "clip_g"))
    check_against_formula(family, model.unet, clip.text_encoders, changes)
    only = LoraLoaderModelOnly().run(ctx, model=sd, lora_name="xl.safetensors", strength_model=STRENGTH)["MODEL"]
    assert only.text_encoders == sd.text_encoders and only.unet is not sd.unet


def test_real_sdxl_key_names_reach_their_layers_at_full_size():
    """Keys as published SDXL LoRAs spell them, on SDXL base's real shapes (on the meta device)."""
    from nodegraph.sd.lora.keys import text_encoder_lora_names
    from nodegraph.sd.openclip import OpenCLIPTextConfig, OpenCLIPTextEncoder
    from nodegraph.sd.unet import UNetConfig

    config = UNetConfig(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2, attention_levels=(1, 2),
                        context_dim=2048, linear_projection=True, head_size=64, adm_in_channels=2816,
                        transformer_depth_input=(0, 0, 2, 2, 10, 10), transformer_depth_middle=10,
                        transformer_depth_output=(10, 10, 10, 2, 2, 2, 0, 0, 0))
    with torch.device("meta"):
        unet = UNet(config)
        big_g = OpenCLIPTextEncoder(OpenCLIPTextConfig(width=1280, layers=32, mlp_width=5120, projection_dim=1280))
    names = unet_lora_names(unet)
    assert names["lora_unet_input_blocks_7_1_transformer_blocks_1_ff_net_0_proj"] == \
        "input_blocks.7.1.transformer_blocks.1.ff.net.0.proj"
    assert names["lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_out_0"] == \
        "output_blocks.0.1.transformer_blocks.9.attn2.to_out.0"
    assert names["unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k"] == \
        "input_blocks.8.1.transformer_blocks.9.attn2.to_k"
    assert names["lora_unet_up_blocks_0_attentions_2_transformer_blocks_9_ff_net_2"] == \
        "output_blocks.2.1.transformer_blocks.9.ff.net.2"
    assert names["lora_unet_mid_block_attentions_0_transformer_blocks_9_attn1_to_q"] == \
        "middle_block.1.transformer_blocks.9.attn1.to_q"
    assert names["lora_unet_up_blocks_1_upsamplers_0_conv"] == "output_blocks.5.2.conv"
    assert names["lora_unet_up_blocks_2_resnets_2_conv_shortcut"] == "output_blocks.8.0.skip_connection"
    table = text_encoder_lora_names(big_g, "clip_g", ("clip_l", "clip_g"))
    v = table["lora_te2_text_model_encoder_layers_31_self_attn_v_proj"]
    assert (v.weight, v.bias, v.rows) == ("transformer.resblocks.31.attn.in_proj_weight",
                                          "transformer.resblocks.31.attn.in_proj_bias", (2560, 3840))
    assert table["text_encoder_2.text_model.encoder.layers.0.mlp.fc2"].weight == \
        "transformer.resblocks.0.mlp.c_proj.weight"
    assert table["text_encoders.clip_g.transformer.text_model.encoder.layers.5.self_attn.out_proj"].weight == \
        "transformer.resblocks.5.attn.out_proj.weight"
