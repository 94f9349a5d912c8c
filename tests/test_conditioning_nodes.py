"""ComfyUI's conditioning nodes (and our CLIPEncode): ComfyUI's names, inputs, defaults, bounds and outputs, what
each does to a CONDITIONING, and workflows that sample with area prompts on the tiny checkpoint."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from engine_fixtures import env, sd_env  # noqa: F401
from engine_fixtures import CHECKPOINT_NAME, all_files, node, txt2img, with_ksampler, workflow
from nodegraph.executor import Executor, NodeFailed
from nodegraph.nodes import RunContext, builtin_registry
from nodegraph.sd import load_checkpoint
from nodegraph.sd.conditioning import Area, AreaFraction, Cond

CONDITIONING_NODES = {  # class_type: (display name, category, [(input, default, min, max), ...] in order)
    "CLIPTextEncode": ("CLIP Text Encode (Prompt)", "conditioning",
                       [("text", None, None, None), ("clip", None, None, None)]),
    "ConditioningCombine": ("Conditioning (Combine)", "conditioning",
                            [("conditioning_1",) + (None,) * 3, ("conditioning_2",) + (None,) * 3]),
    "ConditioningAverage": ("ConditioningAverage", "conditioning",
                            [("conditioning_to",) + (None,) * 3, ("conditioning_from",) + (None,) * 3,
                             ("conditioning_to_strength", 1.0, 0.0, 1.0)]),
    "ConditioningConcat": ("Conditioning (Concat)", "conditioning",
                           [("conditioning_to",) + (None,) * 3, ("conditioning_from",) + (None,) * 3]),
    "ConditioningSetArea": ("Conditioning (Set Area)", "conditioning",
                            [("conditioning",) + (None,) * 3, ("width", 64, 64, 16384), ("height", 64, 64, 16384),
                             ("x", 0, 0, 16384), ("y", 0, 0, 16384), ("strength", 1.0, 0.0, 10.0)]),
    "ConditioningSetAreaPercentage": ("Conditioning (Set Area with Percentage)", "conditioning",
                                      [("conditioning",) + (None,) * 3, ("width", 1.0, 0.0, 1.0),
                                       ("height", 1.0, 0.0, 1.0), ("x", 0.0, 0.0, 1.0), ("y", 0.0, 0.0, 1.0),
                                       ("strength", 1.0, 0.0, 10.0)]),
    "ConditioningSetMask": ("Conditioning (Set Mask)", "conditioning",
                            [("conditioning",) + (None,) * 3, ("mask",) + (None,) * 3, ("strength", 1.0, 0.0, 10.0),
                             ("set_cond_area", "default", None, None)]),
    "ConditioningZeroOut": ("ConditioningZeroOut", "advanced/conditioning", [("conditioning",) + (None,) * 3]),
}
CTX = None  # the conditioning nodes use nothing of their RunContext (the prompt encoders do)


def comfy(class_type: str):
    return builtin_registry().get_comfy(class_type)()


@pytest.mark.parametrize("class_type", CONDITIONING_NODES)
def test_each_node_has_comfyuis_inputs_in_order_with_defaults_bounds_and_one_conditioning_output(class_type):
    display, category, inputs = CONDITIONING_NODES[class_type]
    declared = builtin_registry().get_comfy(class_type)
    assert declared.TYPE == class_type and (declared.DISPLAY_NAME, declared.CATEGORY) == (display, category)
    specs = declared.input_specs()
    assert [(s.name, s.default, s.minimum, s.maximum) for s in specs.values()] == inputs
    assert all(s.required for s in specs.values() if s.kind == "link")
    assert declared.OUTPUTS == {"CONDITIONING": "CONDITIONING"}


def test_set_mask_offers_comfyuis_choices_and_the_prompt_text_has_no_default():
    assert builtin_registry().get_comfy("ConditioningSetMask").input_specs()["set_cond_area"].choices == \
        ("default", "mask bounds")
    text = builtin_registry().get_comfy("CLIPTextEncode").input_specs()["text"]
    assert text.required and text.multiline


@pytest.fixture(scope="module")
def sd(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)


def test_clip_text_encode_and_clip_encode_give_the_same_one_cond(sd, env):
    ctx = RunContext(env, "encode", {})  # the prompt encoders look for embeddings in the env's folders
    (ours,) = builtin_registry().get("CLIPEncode")().run(ctx, clip=sd, text="a red circle")["conditioning"]
    (theirs,) = comfy("CLIPTextEncode").run(ctx, text="a red circle", clip=sd)["CONDITIONING"]
    assert torch.equal(ours.context, sd.encode_prompt(["a red circle"])) and torch.equal(theirs.context, ours.context)
    assert ours.is_everywhere and theirs.is_everywhere and ours.strength == 1.0


def cond(seed: int, tokens: int = 77) -> tuple[Cond]:
    return (Cond(torch.randn(1, tokens, 8, generator=torch.Generator().manual_seed(seed))),)


def test_combine_concat_average_and_zero_out_as_comfyui_defines_them():
    a, b = cond(1), cond(2, 154)
    assert comfy("ConditioningCombine").run(CTX, conditioning_1=a, conditioning_2=b)["CONDITIONING"] == a + b
    (joined,) = comfy("ConditioningConcat").run(CTX, conditioning_to=a, conditioning_from=b)["CONDITIONING"]
    assert joined.context.shape == (1, 231, 8)
    (blended,) = comfy("ConditioningAverage").run(CTX, conditioning_to=b, conditioning_from=a,
                                                  conditioning_to_strength=0.3)["CONDITIONING"]
    padded = torch.cat([a[0].context, torch.zeros(1, 77, 8)], dim=1)
    torch.testing.assert_close(blended.context, b[0].context * 0.3 + padded * 0.7)
    (zeroed,) = comfy("ConditioningZeroOut").run(CTX, conditioning=a)["CONDITIONING"]
    assert torch.count_nonzero(zeroed.context) == 0


def test_set_area_takes_pixels_and_keeps_latent_cells():
    (placed,) = comfy("ConditioningSetArea").run(CTX, conditioning=cond(1), width=200, height=64, x=70, y=16,
                                                 strength=2.5)["CONDITIONING"]
    assert placed.area == Area(8, 25, 2, 8) and placed.strength == 2.5
    (fraction,) = comfy("ConditioningSetAreaPercentage").run(CTX, conditioning=cond(1), width=0.5, height=1.0, x=0.5,
                                                             y=0.0, strength=1.0)["CONDITIONING"]
    assert fraction.area == AreaFraction(height=1.0, width=0.5, y=0.0, x=0.5)


@pytest.mark.parametrize("choice, bounds", [("default", False), ("mask bounds", True)])
def test_set_mask_keeps_the_mask_its_strength_and_the_area_choice(choice, bounds):
    mask = torch.zeros(64, 64)
    (masked,) = comfy("ConditioningSetMask").run(CTX, conditioning=cond(1), mask=mask, strength=0.4,
                                                 set_cond_area=choice)["CONDITIONING"]
    assert masked.mask.shape == (1, 64, 64) and masked.mask_strength == 0.4 and masked.set_area_to_bounds is bounds


# --- workflows on the tiny checkpoint ----------------------------------------------------------------------------


def area_flow(with_area: bool = True, seed: int = 5) -> dict:
    """txt2img with ComfyUI's nodes: a background prompt combined with a second prompt over the right half, and
    the zeroed background as the negative."""
    nodes = dict(
        ckpt=node("LoadCheckpoint", name=CHECKPOINT_NAME),
        back=node("CLIPTextEncode", text="a green field", clip=["ckpt", "clip"]),
        thing=node("CLIPTextEncode", text="a red circle", clip=["ckpt", "clip"]),
        place=node("ConditioningSetArea", conditioning=["thing", "CONDITIONING"], width=64, height=128, x=64, y=0,
                   strength=1.0),
        both=node("ConditioningCombine", conditioning_1=["back", "CONDITIONING"],
                  conditioning_2=["place", "CONDITIONING"]),
        neg=node("ConditioningZeroOut", conditioning=["back", "CONDITIONING"]),
        empty=node("EmptyLatent", width=128, height=128, batch_size=1),
        sample=node("KSampler", model=["ckpt", "model"], seed=seed, steps=3, cfg=6.0, sampler_name="euler",
                    scheduler="normal", positive=["both" if with_area else "back", "CONDITIONING"],
                    negative=["neg", "CONDITIONING"], latent_image=["empty", "latent"], denoise=1.0),
        decode=node("VAEDecode", vae=["ckpt", "vae"], latent=["sample", "LATENT"]),
        save=node("SaveImage", images=["decode", "image"], prefix="area"),
    )
    return workflow(**nodes)


def saved_pixels(folder) -> np.ndarray:
    """The one picture saved in `folder`, removed so the next run's is the only one again."""
    (path,) = all_files(folder)
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    path.unlink()
    return pixels


def test_an_area_prompt_changes_the_picture_mostly_inside_its_area(sd_env):
    executor = Executor(sd_env)
    executor.run(area_flow(with_area=False))
    plain = saved_pixels(sd_env.output_dir)
    executor.run(area_flow(with_area=True))
    placed = saved_pixels(sd_env.output_dir)
    change = np.abs(placed - plain).mean(axis=(0, 2))  # per pixel column
    assert change.max() > 1.0
    assert change[64:].mean() > change[:64].mean()  # the area is the right half


def test_ddpm_sample_refuses_an_area_prompt_with_a_clear_error(sd_env):
    flow = copy.deepcopy(txt2img(steps=2))
    flow["nodes"]["place"] = node("ConditioningSetArea", conditioning=["pos", "conditioning"], width=64, height=64,
                                  x=0, y=0, strength=1.0)
    flow["nodes"]["sample"]["inputs"]["positive"] = ["place", "CONDITIONING"]
    with pytest.raises(NodeFailed) as failure:
        Executor(sd_env).run(flow)
    assert failure.value.node_id == "sample" and "KSampler" in failure.value.message


def test_ddpm_sample_and_ksampler_take_our_clip_encode_conditioning(sd_env):
    executor = Executor(sd_env)
    assert executor.run(txt2img(steps=2)).outputs["save"]["images"]
    assert executor.run(with_ksampler(txt2img(steps=2))).outputs["save"]["images"]
