"""ComfyUI's SDXL text nodes (CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner: comfy_extras/nodes_clip_sdxl.py) and
SDXL workflows on tiny SDXL base and refiner files: KSampler, base then refiner through KSamplerAdvanced, SDXL
Turbo's SDTurboScheduler + SamplerCustom, and the shipped workflows under the real models' file names."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from checkpoints import write_family_checkpoint
from engine_fixtures import CHECKPOINT_NAME, all_files, folders_env, install_checkpoint, node, workflow
from nodegraph.executor import Executor, NodeFailed
from nodegraph.nodes import RunContext, builtin_registry
from nodegraph.sd import load_checkpoint
from nodegraph.sd.prompt import encode_prompt

WORKFLOWS = Path(__file__).parent.parent / "workflows"
BASE, REFINER = "tiny_sdxl.safetensors", "tiny_sdxl_refiner.safetensors"

SDXL_NODES = {  # class_type: (display name, category, [(input, default, min, max), ...] in ComfyUI's order)
    "CLIPTextEncodeSDXL": ("CLIP Text Encode (SDXL)", "advanced/conditioning", [
        ("clip", None, None, None), ("width", 1024, 0, 16384), ("height", 1024, 0, 16384), ("crop_w", 0, 0, 16384),
        ("crop_h", 0, 0, 16384), ("target_width", 1024, 0, 16384), ("target_height", 1024, 0, 16384),
        ("text_g", None, None, None), ("text_l", None, None, None)]),
    "CLIPTextEncodeSDXLRefiner": ("CLIP Text Encode (SDXL Refiner)", "advanced/conditioning", [
        ("ascore", 6.0, 0.0, 1000.0), ("width", 1024, 0, 16384), ("height", 1024, 0, 16384),
        ("text", None, None, None), ("clip", None, None, None)]),
}


@pytest.mark.parametrize("class_type", SDXL_NODES)
def test_the_sdxl_text_nodes_have_comfyuis_inputs_defaults_bounds_and_output(class_type):
    display, category, inputs = SDXL_NODES[class_type]
    declared = builtin_registry().get_comfy(class_type)
    assert declared.TYPE == declared.COMFY_TYPE == class_type and not declared.NATIVE
    assert (declared.DISPLAY_NAME, declared.CATEGORY) == (display, category)
    specs = declared.input_specs()
    assert [(s.name, s.default, s.minimum, s.maximum) for s in specs.values()] == inputs
    assert all(s.required for s in specs.values() if s.default is None)
    assert all(specs[name].multiline for name in specs if name.startswith("text"))
    assert declared.OUTPUTS == {"CONDITIONING": "CONDITIONING"}


# --- what the nodes output ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sdxl")
    return {BASE: write_family_checkpoint(folder / BASE, "sdxl", seed=1),
            REFINER: write_family_checkpoint(folder / REFINER, "sdxl_refiner", seed=2)}


@pytest.fixture(scope="module")
def models(files):
    return {name: load_checkpoint(path, device="cpu", dtype=torch.float32) for name, path in files.items()}


@pytest.fixture
def xl_env(tmp_path, files, tiny_checkpoint):
    """Folders with the tiny SDXL base, refiner and SD 1.x files installed."""
    env = folders_env(tmp_path, tiny_checkpoint)
    for name, path in files.items():
        install_checkpoint(path, env, name)
    return env


def run_node(class_type: str, env, **inputs):
    (result,) = builtin_registry().get_comfy(class_type)().run(RunContext(env, "encode", {}), **inputs)["CONDITIONING"]
    return result


def test_clip_text_encode_sdxl_encodes_text_g_and_text_l_and_sets_the_size_fields(models, xl_env):
    sd = models[BASE]
    sizes = dict(width=1536, height=640, crop_w=8, crop_h=16, target_width=1280, target_height=768)
    out = run_node("CLIPTextEncodeSDXL", xl_env, clip=sd, **sizes, text_g="a red circle", text_l="a blue square")
    context, pooled = encode_prompt(sd, "", texts_by_encoder={"clip_g": "a red circle", "clip_l": "a blue square"})
    assert torch.equal(out.context, context) and torch.equal(out.pooled, pooled) and out.pooled.shape == (1, 1280)
    assert {name: getattr(out, name) for name in sizes} == sizes and out.aesthetic_score is None
    assert out.is_everywhere and out.strength == 1.0
    # text_g alone decides the pooled output, text_l alone the CLIP-L half of the context
    other_l = run_node("CLIPTextEncodeSDXL", xl_env, clip=sd, **sizes, text_g="a red circle", text_l="a cat")
    assert torch.equal(other_l.pooled, out.pooled) and torch.equal(other_l.context[..., 64:], out.context[..., 64:])
    assert not torch.equal(other_l.context[..., :64], out.context[..., :64])


def test_clip_text_encode_sdxl_refiner_sets_the_score_and_size_on_bigg_alone(models, xl_env):
    sd = models[REFINER]
    out = run_node("CLIPTextEncodeSDXLRefiner", xl_env, ascore=2.5, width=768, height=512, text="blurry", clip=sd)
    context, pooled = encode_prompt(sd, "blurry")
    assert torch.equal(out.context, context) and out.context.shape == (1, 77, 128) and torch.equal(out.pooled, pooled)
    assert (out.aesthetic_score, out.width, out.height) == (2.5, 768, 512)
    assert (out.crop_w, out.crop_h, out.target_width, out.target_height) == (None,) * 4
    # ComfyUI's refiner node also reads a base CLIP (both encoders, bigG's pooled output)
    assert run_node("CLIPTextEncodeSDXLRefiner", xl_env, ascore=6.0, width=1024, height=1024, text="x",
                    clip=models[BASE]).context.shape == (1, 77, 64 + 128)


@pytest.mark.parametrize("class_type,clip,words", [
    ("CLIPTextEncodeSDXL", "sd1", "needs a CLIP with clip_l and clip_g .* SD 1.x's with clip_l"),
    ("CLIPTextEncodeSDXL", REFINER, "needs a CLIP with clip_l and clip_g .* SDXL refiner's with clip_g"),
    ("CLIPTextEncodeSDXLRefiner", "sd1", "needs a CLIP with clip_g .* SD 1.x's with clip_l"),
])
def test_a_clip_without_the_encoders_is_a_clear_node_error(xl_env, class_type, clip, words):
    inputs = {"CLIPTextEncodeSDXL": dict(text_g="a", text_l="b"), "CLIPTextEncodeSDXLRefiner": dict(text="a")}
    flow = workflow(
        ckpt=node("LoadCheckpoint", name=CHECKPOINT_NAME if clip == "sd1" else clip),
        encode=node(class_type, clip=["ckpt", "clip"], **inputs[class_type]),
        zero=node("ConditioningZeroOut", conditioning=["encode", "CONDITIONING"]),
        empty=node("EmptyLatent", width=64, height=64, batch_size=1),
        sample=node("KSampler", model=["ckpt", "model"], positive=["encode", "CONDITIONING"],
                    negative=["zero", "CONDITIONING"], latent_image=["empty", "latent"], steps=1),
        decode=node("VAEDecode", vae=["ckpt", "vae"], latent=["sample", "LATENT"]),
        save=node("SaveImage", images=["decode", "image"], prefix="x"),
    )
    with pytest.raises(NodeFailed, match=words) as failure:
        Executor(xl_env).run(flow)
    assert failure.value.node_id == "encode" and "use CLIPTextEncode" in failure.value.message


# --- workflows ------------------------------------------------------------------------------------------------------


def saved_pixels(folder) -> np.ndarray:
    """The one picture saved in `folder`, removed so the next run's is the only one again."""
    (path,) = all_files(folder)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    path.unlink()
    return pixels


def sdxl_text(clip: str, text: str, **sizes) -> dict:
    return node("CLIPTextEncodeSDXL", clip=[clip, "clip"], text_g=text, text_l=text,
                **({"width": 64, "height": 64, "target_width": 64, "target_height": 64} | sizes))


def refiner_text(clip: str, text: str, ascore: float) -> dict:
    return node("CLIPTextEncodeSDXLRefiner", ascore=ascore, width=64, height=64, text=text, clip=[clip, "clip"])


def base_flow(**sizes) -> dict:
    """SDXL base through ComfyUI's KSampler, its prompts through CLIPTextEncodeSDXL."""
    return workflow(
        base=node("LoadCheckpoint", name=BASE),
        pos=sdxl_text("base", "a red circle", **sizes),
        neg=sdxl_text("base", "blurry"),
        empty=node("EmptyLatent", width=64, height=64, batch_size=1),
        sample=node("KSampler", model=["base", "model"], seed=3, steps=3, cfg=6.0, sampler_name="euler",
                    scheduler="normal", positive=["pos", "CONDITIONING"], negative=["neg", "CONDITIONING"],
                    latent_image=["empty", "latent"], denoise=1.0),
        decode=node("VAEDecode", vae=["base", "vae"], latent=["sample", "LATENT"]),
        save=node("SaveImage", images=["decode", "image"], prefix="sdxl"),
    )


def base_then_refiner(ascore: float = 6.0) -> dict:
    """Steps 0-4 of 6 on the base keeping the leftover noise, 4-6 on the refiner (ComfyUI's pattern)."""
    flow = base_flow()
    nodes = flow["nodes"]
    nodes["refiner"] = node("LoadCheckpoint", name=REFINER)
    nodes["rpos"] = refiner_text("refiner", "a red circle", ascore)
    nodes["rneg"] = refiner_text("refiner", "blurry", 2.5)
    common = dict(noise_seed=3, steps=6, cfg=6.0, sampler_name="euler", scheduler="normal")
    nodes["sample"] = node("KSamplerAdvanced", model=["base", "model"], add_noise="enable", **common,
                           positive=["pos", "CONDITIONING"], negative=["neg", "CONDITIONING"],
                           latent_image=["empty", "latent"], start_at_step=0, end_at_step=4,
                           return_with_leftover_noise="enable")
    nodes["finish"] = node("KSamplerAdvanced", model=["refiner", "model"], add_noise="disable", **common,
                           positive=["rpos", "CONDITIONING"], negative=["rneg", "CONDITIONING"],
                           latent_image=["sample", "LATENT"], start_at_step=4, end_at_step=10000,
                           return_with_leftover_noise="disable")
    nodes["decode"] = node("VAEDecode", vae=["refiner", "vae"], latent=["finish", "LATENT"])
    return flow


def refiner_flow(ascore: float = 6.0) -> dict:
    """The refiner alone through KSampler, its prompts through CLIPTextEncodeSDXLRefiner."""
    flow = base_flow()
    nodes = flow["nodes"]
    nodes["base"]["inputs"]["name"] = REFINER
    nodes["pos"], nodes["neg"] = refiner_text("base", "a red circle", ascore), refiner_text("base", "blurry", 2.5)
    return flow


def turbo_flow(steps: int = 1) -> dict:
    """SDXL Turbo's way: CLIPTextEncode, SDTurboScheduler and SamplerCustom at cfg 1."""
    return workflow(
        base=node("LoadCheckpoint", name=BASE),
        pos=node("CLIPTextEncode", text="a red circle", clip=["base", "clip"]),
        neg=node("CLIPTextEncode", text="", clip=["base", "clip"]),
        empty=node("EmptyLatent", width=64, height=64, batch_size=1),
        sampler=node("KSamplerSelect", sampler_name="euler_ancestral"),
        sigmas=node("SDTurboScheduler", model=["base", "model"], steps=steps, denoise=1.0),
        sample=node("SamplerCustom", model=["base", "model"], add_noise=True, noise_seed=3, cfg=1.0,
                    positive=["pos", "CONDITIONING"], negative=["neg", "CONDITIONING"],
                    sampler=["sampler", "SAMPLER"], sigmas=["sigmas", "SIGMAS"], latent_image=["empty", "latent"]),
        decode=node("VAEDecode", vae=["base", "vae"], latent=["sample", "output"]),
        save=node("SaveImage", images=["decode", "image"], prefix="turbo"),
    )


def a_picture(pixels: np.ndarray, size=(64, 64)) -> bool:
    return pixels.shape == size + (3,) and pixels.std() > 1.0


@pytest.mark.parametrize("flow", [base_flow(), refiner_flow(), base_then_refiner(), turbo_flow(), turbo_flow(steps=3)],
                         ids=["KSampler", "KSampler refiner", "KSamplerAdvanced base 0-4 then refiner 4-6",
                              "SDTurbo 1 step", "SDTurbo 3 steps"])
def test_sdxl_workflows_run_and_give_a_picture(xl_env, flow):
    result = Executor(xl_env).run(flow)
    assert len(result.outputs["save"]["images"]) == 1
    assert a_picture(saved_pixels(xl_env.output_dir))


def saving_the_latent(flow: dict) -> dict:
    """`flow` saving its sampled latent (a .latent file) instead of a picture: the tiny VAE hides small changes."""
    flow = copy.deepcopy(flow)
    nodes = flow["nodes"]
    sampled = nodes.pop("decode")["inputs"]["latent"]
    nodes["save"] = node("SaveLatent", samples=sampled, filename_prefix="latent")
    return flow


def saved_latent(folder) -> torch.Tensor:
    (path,) = all_files(folder)
    latent = load_file(str(path))["latent_tensor"]
    path.unlink()
    return latent


@pytest.mark.parametrize("flow,changed", [
    (base_flow, lambda: base_flow(width=128)),
    (base_flow, lambda: base_flow(crop_w=32)),
    (base_flow, lambda: base_flow(target_height=256)),
    (refiner_flow, lambda: refiner_flow(ascore=9.0)),
], ids=["width", "crop_w", "target_height", "refiner ascore"])
def test_the_size_conditioning_changes_the_result(xl_env, flow, changed):
    # from an empty latent: after a base run the tiny random base's latent is ~100x larger than the refiner's
    # contribution (its ascore moves the chained result by 4e-6 only)
    executor = Executor(xl_env)
    executor.run(saving_the_latent(flow()))
    before = saved_latent(xl_env.output_dir)
    executor.run(saving_the_latent(changed()))
    after = saved_latent(xl_env.output_dir)
    Executor(xl_env).run(saving_the_latent(flow()))  # a fresh executor: this one would answer from its cache
    again = saved_latent(xl_env.output_dir)
    change = float((after - before).norm() / before.norm())
    print(f"latent relative change {change:.1e}")
    assert change > 1e-4 and torch.equal(again, before)


SHIPPED = {  # workflow -> (the file names it loads, the tiny file each stands for)
    "sdxl_base_refiner.json": {"sd_xl_base_1.0.safetensors": BASE, "sd_xl_refiner_1.0.safetensors": REFINER},
    "sdxl_turbo.json": {"sd_xl_turbo_1.0_fp16.safetensors": BASE},
}


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_sdxl_workflows_run_on_tiny_files_under_the_real_names(tmp_path, files, name):
    env = folders_env(tmp_path)
    for real, tiny in SHIPPED[name].items():
        install_checkpoint(files[tiny], env, real)
    flow = json.loads((WORKFLOWS / name).read_text())
    smaller = copy.deepcopy(flow)  # 1024 x 1024 is too much for the CPU here: the same graph at 64 x 64
    for node_id, spec in smaller["nodes"].items():
        if spec["type"] == "EmptyLatent":
            spec["inputs"].update(width=64, height=64)
    result = Executor(env).run(smaller)
    assert list(result.outputs) == ["save"] and len(result.outputs["save"]["images"]) == 1
    assert a_picture(saved_pixels(env.output_dir))
    # the graph as shipped is valid as it stands (validation lists file names only)
    assert Executor(env).validate(flow).output_nodes == ["save"]
