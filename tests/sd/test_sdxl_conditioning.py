"""SDXL's size conditioning from CONDITIONING to the UNet's y, as ComfyUI builds it (samplers.py encode_model_conds,
process_conds, create_cond_with_same_area_if_none; model_base.py SDXL/SDXLRefiner.encode_adm), and CLIPTextEncodeSDXL's
two prompts (comfy_extras/nodes_clip_sdxl.py).

The vectors are checked against adm.sdxl_adm/refiner_adm of the numbers ComfyUI would use (those two are checked
against diffusers' time embeddings in test_unet_families.py); whole denoiser calls on the tiny SDXL and refiner
checkpoints are checked against diffusers' UNet given the same numbers as `time_ids`, with a reference of ComfyUI's
procedure for area prompts written here on ComfyUI's own data shape (a dict per cond, each evaluated alone)."""


import pytest
import torch
from safetensors.torch import load_file

from checkpoints import FAMILY_UNETS, write_family_checkpoint
from nodegraph.sd import conditioning as cond
from nodegraph.sd import load_checkpoint
from nodegraph.sd.adm import adm_width, cond_adm, refiner_adm, sdxl_adm
from nodegraph.sd.conditioning import Area, AreaFraction, Cond
from nodegraph.sd.prompt import chunks_of, encode, encode_prompt, tokenize
from nodegraph.sd.sampling import DiscreteSchedule, GuidedDenoiser, sample_ksampler
from nodegraph.sd.sampling.regions import RegionPlan
from parity import comfy_add_twin, relative_error
from family_reference import diffusers_unet

SCHEDULE = DiscreteSchedule()
TOLERANCE = 1e-4
SIZES = dict(width=832, height=1216, crop_w=16, crop_h=48, target_width=1152, target_height=896)


def pooled(seed: int) -> torch.Tensor:
    return torch.randn(1, 1280, generator=torch.Generator().manual_seed(seed))


def text(seed: int, width: int = 8, tokens: int = 77) -> torch.Tensor:
    return torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed))


# --- one cond's y ------------------------------------------------------------------------------------------------


def test_a_conds_y_takes_comfyuis_defaults_from_the_latent_size():
    p = pooled(1)
    plain = Cond(text(1), pooled=p)
    # latent 12 x 10 cells: 96 x 80 pixels; crops 0; targets the sizes
    assert torch.equal(cond_adm(plain, "sdxl", 12, 10), sdxl_adm(p, 96, 80, 0, 0, 96, 80))
    assert torch.equal(cond_adm(plain, "sdxl", 12, 10, negative=True), sdxl_adm(p, 96, 80, 0, 0, 96, 80))
    assert torch.equal(cond_adm(plain, "refiner", 12, 10), refiner_adm(p, 96, 80, 0, 0, 6.0))
    assert torch.equal(cond_adm(plain, "refiner", 12, 10, negative=True), refiner_adm(p, 96, 80, 0, 0, 2.5))


def test_a_conds_own_numbers_win_and_its_targets_default_to_its_own_size():
    p = pooled(2)
    sized = Cond(text(2), pooled=p, **SIZES, aesthetic_score=7.25)
    assert torch.equal(cond_adm(sized, "sdxl", 12, 10), sdxl_adm(p, 1216, 832, 48, 16, 896, 1152))
    assert torch.equal(cond_adm(sized, "refiner", 12, 10, negative=True), refiner_adm(p, 1216, 832, 48, 16, 7.25))
    no_target = Cond(text(2), pooled=p, width=640, height=512)  # CLIPTextEncodeSDXLRefiner's fields on the base
    assert torch.equal(cond_adm(no_target, "sdxl", 12, 10), sdxl_adm(p, 512, 640, 0, 0, 512, 640))


def test_no_pooled_output_is_zeros_and_a_foreign_one_is_a_clear_error():
    bare = Cond(text(3).repeat(2, 1, 1))  # a plain context tensor, batch 2
    y = cond_adm(bare, "sdxl", 8, 8)
    assert y.shape == (2, adm_width("sdxl")) == (2, 2816) and torch.equal(y[:, :1280], torch.zeros(2, 1280))
    assert adm_width("refiner") == 2560
    with pytest.raises(ValueError, match="1280-wide pooled text output.*another model family"):
        cond_adm(Cond(text(3), pooled=torch.zeros(1, 768)), "sdxl", 8, 8)


def test_the_conditioning_nodes_carry_the_size_fields_as_comfyui_does():
    sized = Cond(text(4), pooled=pooled(4), **SIZES, aesthetic_score=3.0)
    other = Cond(text(5), pooled=pooled(5), width=64)
    fields = lambda c: tuple(getattr(c, name) for name in cond.SIZE_FIELDS)  # noqa: E731
    for result in (cond.concat((sized,), (other,)), cond.average((sized,), (other,), 0.3), cond.zero_out((sized,)),
                   cond.set_area((sized,), Area(8, 8), 1.0), cond.set_mask((sized,), torch.ones(8, 8), 1.0, True),
                   cond.combine((sized,), (other,))[:1]):
        assert fields(result[0]) == fields(sized)
    # Average blends the pooled outputs; a target without one takes the source's
    blended = cond.average((sized,), (other,), 0.3)[0].pooled
    torch.testing.assert_close(blended, sized.pooled * 0.3 + other.pooled * 0.7)
    assert torch.equal(cond.average((Cond(text(6)),), (other,), 0.3)[0].pooled, other.pooled)


# --- the sampler's y: plain path ---------------------------------------------------------------------------------


class Recorder:
    """A UNet stand-in whose answer depends on x, the context and y; records every call's y."""

    def __init__(self):
        self.ys = []
        self.weights = torch.randn(2816, 4, generator=torch.Generator().manual_seed(0)) / 30

    def __call__(self, x, t, context, y=None):
        self.ys.append(y)
        bias = 0 if y is None else (y @ self.weights[: y.shape[1]])[:, :, None, None]
        gain = context.mean(dim=(1, 2))[:, None, None, None]
        return torch.tanh(x * gain + bias + torch.as_tensor(t).reshape(-1, 1, 1, 1) / 1000)


X = torch.randn(2, 4, 12, 10, generator=torch.Generator().manual_seed(7)) * 2
SIGMA = torch.full((2,), 2.5)


@pytest.mark.parametrize("kind", ["sdxl", "refiner"])
def test_the_plain_path_batches_the_positives_then_the_negatives_y_like_the_contexts(kind):
    positive = Cond(text(1), pooled=pooled(1), width=1024, height=768, crop_w=8, aesthetic_score=5.5)
    negative = Cond(text(2), pooled=pooled(2))
    model = Recorder()
    GuidedDenoiser(model, SCHEDULE, (positive,), (negative,), 5.0, adm=kind)(X, SIGMA)
    [y] = model.ys
    if kind == "sdxl":
        expected = [sdxl_adm(pooled(1), 768, 1024, 0, 8, 768, 1024), sdxl_adm(pooled(2), 96, 80, 0, 0, 96, 80)]
    else:
        expected = [refiner_adm(pooled(1), 768, 1024, 0, 8, 5.5), refiner_adm(pooled(2), 96, 80, 0, 0, 2.5)]
    assert torch.equal(y, torch.cat([expected[0], expected[0], expected[1], expected[1]]))


def test_at_cfg_1_only_the_positives_y_goes_in_and_sd1_models_get_none():
    model = Recorder()
    GuidedDenoiser(model, SCHEDULE, (Cond(text(1), pooled=pooled(1)),), (Cond(text(2)),), 1.0, adm="refiner")(X, SIGMA)
    assert torch.equal(model.ys[0], refiner_adm(pooled(1), 96, 80, 0, 0, 6.0).repeat(2, 1))
    sd1 = Recorder()
    GuidedDenoiser(sd1, SCHEDULE, (Cond(text(1), pooled=pooled(1), width=64),), (Cond(text(2)),), 5.0)(X, SIGMA)
    GuidedDenoiser(sd1, SCHEDULE, (Cond(text(1), area=Area(4, 4)),), (Cond(text(2)),), 5.0)(X, SIGMA)
    assert sd1.ys == [None, None, None]


# --- the sampler's y: areas, against ComfyUI's procedure ----------------------------------------------------------


def area_plan(kind: str, positive, negative, shape=(1, 4, 16, 16)) -> RegionPlan:
    return RegionPlan.build((positive, negative), shape, torch.device("cpu"), evaluated=(True, True), adm=kind)


def test_area_conds_get_the_whole_latents_size_and_twins_their_sources_y():
    # encode_model_conds fills width/height from the noise's (whole latent's) size, whatever the area; the twin
    # of an area cond on the other side copies its source's model_conds, so it has that side's y.
    a, n = Cond(text(1), pooled=pooled(1)), Cond(text(3), pooled=pooled(3), aesthetic_score=1.5)
    b = Cond(text(2), pooled=pooled(2), area=Area(8, 8, 4, 4), crop_h=24)
    m = Cond(text(4), pooled=pooled(4), area=Area(8, 8, 0, 8))
    plan = area_plan("refiner", (a, b), (n, m))
    (ya, yb, ym_twin), (yn, ym, yb_twin) = ([region.y for region in listed] for listed in plan.regions)
    assert torch.equal(ya, refiner_adm(pooled(1), 128, 128, 0, 0, 6.0))
    assert torch.equal(yb, refiner_adm(pooled(2), 128, 128, 24, 0, 6.0))
    assert torch.equal(yn, refiner_adm(pooled(3), 128, 128, 0, 0, 1.5))
    assert torch.equal(ym, refiner_adm(pooled(4), 128, 128, 0, 0, 2.5))
    assert torch.equal(yb_twin, yn) and torch.equal(ym_twin, ya)  # the other side's text, size and score
    twin = plan.regions[1][2]
    assert (twin.rows, twin.cols) == (slice(4, 12), slice(4, 12)) and torch.equal(twin.context, n.context)


def comfy_dict(c: Cond) -> dict:
    """The options ComfyUI's nodes would have set for this cond (areas only; masks are test_conditioning_guidance's)."""
    options = {"cross_attn": c.context, "pooled_output": c.pooled, "strength": c.strength}
    options.update({name: getattr(c, name) for name in cond.SIZE_FIELDS if getattr(c, name) is not None})
    if isinstance(c.area, AreaFraction):
        options["area"] = (max(1, round(c.area.height * 16)), max(1, round(c.area.width * 16)),
                           round(c.area.y * 16), round(c.area.x * 16))
    elif c.area is not None:
        options["area"] = (c.area.height, c.area.width, c.area.y, c.area.x)
    return options


def comfy_encode_adm(kind: str, options: dict, noise_shape, prompt_type: str) -> torch.Tensor:
    """model_base.py SDXL/SDXLRefiner.encode_adm with encode_model_conds' defaults, as ComfyUI's time_ids."""
    width = options.get("width", noise_shape[3] * 8)
    height = options.get("height", noise_shape[2] * 8)
    crop_w, crop_h = options.get("crop_w", 0), options.get("crop_h", 0)
    if kind == "sdxl":
        numbers = [height, width, crop_h, crop_w, options.get("target_height", height),
                   options.get("target_width", width)]
    else:
        numbers = [height, width, crop_h, crop_w,
                   options.get("aesthetic_score", 2.5 if prompt_type == "negative" else 6)]
    return torch.tensor([numbers], dtype=torch.float32)


def area_mult(options: dict, x: torch.Tensor):
    batch, channels, height, width = x.shape
    h, w, y0, x0 = options.get("area", (height, width, 0, 0))
    h, w = min(height - y0, h), min(width - x0, w)
    mult = torch.ones(batch, channels, h, w) * options["strength"]
    if "area" in options:
        for axis, offset, size, full in ((2, y0, h, height), (3, x0, w, width)):
            fade = min(8, size // 4)
            for t in range(fade):
                factor = (1.0 / fade) * (t + 1)
                if offset != 0:
                    mult.narrow(axis, t, 1).mul_(factor)
                if offset + size < full:
                    mult.narrow(axis, size - 1 - t, 1).mul_(factor)
    return slice(y0, y0 + h), slice(x0, x0 + w), mult


def comfy_denoiser(unet, kind, positive, negative, cfg):
    """ComfyUI's process_conds + calc_cond_batch + cfg_function, one diffusers UNet call per cond."""

    def denoise(x, sigma):
        conds = {"positive": [comfy_dict(c) for c in positive], "negative": [comfy_dict(c) for c in negative]}
        for prompt_type, listed in conds.items():  # encode_model_conds, before the twins
            for options in listed:
                options["model_conds"] = {"c_crossattn": options["cross_attn"], "text_embeds": options["pooled_output"],
                                          "time_ids": comfy_encode_adm(kind, options, x.shape, prompt_type)}
        for side in conds:
            for c in list(conds[side]):
                for other in conds:
                    if other != side:
                        comfy_add_twin(conds[other], c, carried="model_conds")
        outputs = []
        for listed in (conds["positive"], conds["negative"]):
            out, counts = torch.zeros_like(x), torch.ones_like(x) * 1e-37
            for options in listed:
                rows, cols, mult = area_mult(options, x)
                crop, model = x[:, :, rows, cols], options["model_conds"]
                s = sigma.reshape(-1, 1, 1, 1)
                batch = crop.shape[0]
                with torch.no_grad():
                    eps = unet(crop / (s**2 + 1) ** 0.5, SCHEDULE.timestep(sigma),
                               encoder_hidden_states=model["c_crossattn"].repeat(batch, 1, 1),
                               added_cond_kwargs={"text_embeds": model["text_embeds"].repeat(batch, 1),
                                                  "time_ids": model["time_ids"].repeat(batch, 1)}).sample
                out[:, :, rows, cols] += (crop - eps * s) * mult
                counts[:, :, rows, cols] += mult
            outputs.append(out / counts)
        return outputs[1] + (outputs[0] - outputs[1]) * cfg

    return denoise


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(ours, diffusers' UNet) for the tiny SDXL base and refiner files, by ADM kind."""
    models = {}
    for family, kind in (("sdxl", "sdxl"), ("sdxl_refiner", "refiner")):
        path = write_family_checkpoint(tmp_path_factory.mktemp(family) / "model.safetensors", family, seed=3)
        sd = load_checkpoint(path, device="cpu", dtype=torch.float32)
        models[kind] = sd, diffusers_unet(load_file(str(path)), FAMILY_UNETS[family]).requires_grad_(False)
    return models


def prompts(sd, *texts, **fields) -> list[Cond]:
    return [cond.encode_text(sd, t, **fields)[0] for t in texts]


AREA_SCENARIOS = {  # name -> (positive, negative) builders over prompts p, q, n and the fields
    "plain, sizes set": lambda p, q, n: ((p.replace(**SIZES, aesthetic_score=7.0),), (n,)),
    "area inside": lambda p, q, n: ((p, q.replace(area=Area(8, 8, 4, 4), strength=1.5, crop_w=32)), (n,)),
    "area on two edges, sizes": lambda p, q, n: ((p, q.replace(area=Area(8, 16, 8, 0), **SIZES)),
                                                 (n.replace(width=512),)),
    "percentage": lambda p, q, n: ((p.replace(aesthetic_score=4.0),
                                    q.replace(area=AreaFraction(0.5, 0.75, 0.25, 0.25))), (n,)),
    "negative area": lambda p, q, n: ((p.replace(height=640),),
                                      (n, q.replace(area=Area(8, 8, 8, 8), aesthetic_score=9.0))),
}


@pytest.mark.parametrize("kind", ["sdxl", "refiner"])
@pytest.mark.parametrize("name", AREA_SCENARIOS)
def test_the_denoiser_matches_comfyuis_procedure_on_diffusers_unet(tiny, kind, name):
    sd, theirs = tiny[kind]
    p, q, n = prompts(sd, "a red circle", "a blue square", "blurry")
    positive, negative = AREA_SCENARIOS[name](p, q, n)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(9)) * 3
    sigma = torch.full((2,), 3.0)
    expected = comfy_denoiser(theirs, kind, positive, negative, 5.0)(x, sigma)
    with torch.no_grad():
        actual = GuidedDenoiser(sd.unet, sd.schedule, positive, negative, 5.0, adm=sd.family.adm)(x, sigma)
    error = relative_error(actual, expected)
    print(f"{kind} {name}: relative error {error:.1e}")
    assert error <= TOLERANCE


@pytest.mark.parametrize("kind,field,value", [("sdxl", "width", 640), ("sdxl", "crop_h", 64),
                                              ("sdxl", "target_width", 2048), ("refiner", "aesthetic_score", 2.0),
                                              ("refiner", "crop_w", 128)])
def test_each_size_field_changes_the_sampled_latent(tiny, kind, field, value):
    sd, _ = tiny[kind]
    negative = prompts(sd, "blurry")[0]

    def latent(**fields):
        positive = prompts(sd, "a red circle", **fields)[0]
        return sample_ksampler(sd, (positive,), (negative,), torch.zeros(1, 4, 8, 8), seed=3, steps=3, cfg=5.0,
                               sampler_name="euler", scheduler="normal").latent

    base, changed = latent(), latent(**{field: value})
    assert relative_error(changed, base) > 1e-3
    assert torch.equal(latent(), base)  # and nothing else moved it


# --- CLIPTextEncodeSDXL's two prompts -------------------------------------------------------------------------------


def encoder_chunks(sd, name: str, text: str):
    recipe = next(r for r in sd.family.text if r.name == name)
    return recipe, tokenize(sd.tokenizer, text, pad_token=recipe.pad_token)


def encoded(sd, name: str, chunks) -> tuple[torch.Tensor, torch.Tensor]:
    recipe = next(r for r in sd.family.text if r.name == name)
    return encode(sd.text_encoders[name], chunks, sd.text_layer(name), recipe.layer_norm, recipe.pad_token)


LONG = ", ".join(["a very long prompt about many small red circles on a white background"] * 8)  # 2 chunks


@pytest.mark.parametrize("text_g,text_l", [("a red circle", "a blue square"), (LONG, "a blue square"),
                                           ("a red circle", LONG)])
def test_each_encoder_reads_its_own_text_and_the_shorter_gets_empty_chunks(tiny, text_g, text_l):
    sd, _ = tiny["sdxl"]
    (_, chunks_g), (recipe_l, chunks_l) = encoder_chunks(sd, "clip_g", text_g), encoder_chunks(sd, "clip_l", text_l)
    longest = max(len(chunks_g), len(chunks_l))
    pad = lambda chunks, recipe: chunks + chunks_of([], 77, recipe.pad_token) * (longest - len(chunks))  # noqa: E731
    recipe_g = next(r for r in sd.family.text if r.name == "clip_g")
    context_l, _ = encoded(sd, "clip_l", pad(chunks_l, recipe_l))
    context_g, pooled_g = encoded(sd, "clip_g", pad(chunks_g, recipe_g))
    context, pooled_out = encode_prompt(sd, "ignored", texts_by_encoder={"clip_g": text_g, "clip_l": text_l})
    assert context.shape == (1, 77 * longest, 64 + 128)
    assert torch.equal(context, torch.cat([context_l, context_g], dim=-1))
    assert torch.equal(pooled_out, pooled_g)  # bigG's pooled state of text_g's first chunk
    if text_g != LONG:  # the pooled output does not depend on text_l
        other = encode_prompt(sd, "", texts_by_encoder={"clip_g": text_g, "clip_l": "something else"})[1]
        assert torch.equal(other, pooled_out)


def test_the_same_text_for_both_is_clip_text_encodes_and_unknown_encoders_are_refused(tiny):
    sd, _ = tiny["sdxl"]
    same = encode_prompt(sd, "x", texts_by_encoder={"clip_g": "a red circle", "clip_l": "a red circle"})
    plain = encode_prompt(sd, "a red circle")
    assert torch.equal(same[0], plain[0]) and torch.equal(same[1], plain[1])
    with pytest.raises(ValueError, match="SDXL refiner has no text encoder clip_l"):
        encode_prompt(tiny["refiner"][0], "x", texts_by_encoder={"clip_l": "y"})
