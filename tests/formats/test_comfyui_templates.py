"""ComfyUI's own workflow templates (PyPI comfyui-workflow-templates 0.1.95): the SD1.5 ones convert to the API prompt
ComfyUI's frontend queues for them, default.json and image2image.json run unchanged through `python -m nodegraph`,
and so do the SDXL ones (base -> refiner, refiner prompts, SDXL Turbo).

The expected prompts are written from the files and the frontend's rules (graphToPrompt: widget values by the
node's inputs, control and upload values skipped, Notes dropped, _meta.title the node's title or display name), not
from our converter's output.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from checkpoints import write_family_checkpoint
from engine_fixtures import all_files, env  # noqa: F401  (env is a fixture)
from formats_standins import STANDINS, standin_registry
from nodegraph.cli import main
from nodegraph.executor import Executor
from nodegraph.formats import png_workflows, to_native
from nodegraph.nodes import builtin_registry

comfyui_workflow_templates = pytest.importorskip("comfyui_workflow_templates")
TEMPLATES = Path(comfyui_workflow_templates.__file__).parent / "templates"
REPO = Path(__file__).parent.parent.parent


def template(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text(encoding="utf-8"))


def node(class_type: str, title: str, **inputs) -> dict:
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}


def checkpoint(name):
    return node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=name)


def text(prompt, clip):
    return node("CLIPTextEncode", "CLIP Text Encode (Prompt)", text=prompt, clip=clip)


def ksampler(seed, steps, cfg, sampler, scheduler, denoise, model, positive, negative, latent):
    return node("KSampler", "KSampler", seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
                denoise=denoise, model=model, positive=positive, negative=negative, latent_image=latent)


def decode(samples, vae):
    return node("VAEDecode", "VAE Decode", samples=samples, vae=vae)


def save(images):
    return node("SaveImage", "Save Image", filename_prefix="ComfyUI", images=images)


def scale_to_pixels(image):  # every template asks for 0.25 megapixels
    return node("ImageScaleToTotalPixels", "Scale Image to Total Pixels", upscale_method="nearest-exact",
                megapixels=0.25, image=image)


EXPECTED = {
    "default": {
        "4": checkpoint("v1-5-pruned-emaonly-fp16.safetensors"),
        "6": text("beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", ["4", 1]),
        "7": text("text, watermark", ["4", 1]),
        "5": node("EmptyLatentImage", "Empty Latent Image", width=512, height=512, batch_size=1),
        "3": ksampler(156680208700286, 20, 8, "euler", "normal", 1, ["4", 0], ["6", 0], ["7", 0], ["5", 0]),
        "8": decode(["3", 0], ["4", 2]),
        "9": save(["8", 0]),
    },
    "image2image": {
        "14": checkpoint("v1-5-pruned-emaonly-fp16.safetensors"),
        "6": text("photograph of victorian woman with wings, sky clouds, meadow grass\n", ["14", 1]),
        "7": text("watermark, text\n", ["14", 1]),
        "10": node("LoadImage", "Load Image", image="example.png"),
        "18": scale_to_pixels(["10", 0]),
        "12": node("VAEEncode", "VAE Encode", pixels=["18", 0], vae=["14", 2]),
        "3": ksampler(280823642470253, 20, 8, "dpmpp_2m", "normal", 0.8700000000000001, ["14", 0], ["6", 0],
                      ["7", 0], ["12", 0]),
        "8": decode(["3", 0], ["14", 2]),
        "9": save(["8", 0]),
    },
    "inpaint_example": {
        "29": checkpoint("512-inpainting-ema.safetensors"),
        "6": text("teacup on pink tablecloth, Anime style", ["29", 1]),
        "7": text("watermark, text\n", ["29", 1]),
        "20": node("LoadImage", "Load Image", image="input.png"),
        "33": scale_to_pixels(["20", 0]),
        "26": node("VAEEncodeForInpaint", "VAE Encode (for Inpainting)", grow_mask_by=6, pixels=["33", 0],
                   vae=["29", 2], mask=["20", 1]),
        "3": ksampler(808369199502636, 20, 8, "uni_pc_bh2", "normal", 1, ["29", 0], ["6", 0], ["7", 0], ["26", 0]),
        "8": decode(["3", 0], ["29", 2]),
        "9": save(["8", 0]),
    },
    "hiresfix_latent_workflow": {
        "16": checkpoint("DreamShaper_8_pruned.safetensors"),
        "6": text("masterpiece HDR victorian portrait painting of woman, blonde hair, mountain nature, blue sky, "
                  "(oil painting:1.1)", ["16", 1]),
        "7": text("bad hands, text, watermark,nsfw\n", ["16", 1]),
        "5": node("EmptyLatentImage", "Empty Latent Image", width=512, height=512, batch_size=1),
        "3": ksampler(873141143997374, 12, 8, "dpmpp_sde", "normal", 1, ["16", 0], ["6", 0], ["7", 0], ["5", 0]),
        "8": decode(["3", 0], ["16", 2]),
        "18": node("PreviewImage", "Preview Image", images=["8", 0]),
        "10": node("LatentUpscale", "Upscale Latent", upscale_method="nearest-exact", width=768, height=768,
                   crop="disabled", samples=["3", 0]),
        "11": ksampler(32484370206415, 14, 8, "dpmpp_2m", "simple", 0.5, ["16", 0], ["6", 0], ["7", 0], ["10", 0]),
        "13": decode(["11", 0], ["16", 2]),
        "12": save(["13", 0]),
    },
    "inpaint_model_outpainting": {
        "29": checkpoint("512-inpainting-ema.safetensors"),
        "6": text("a close-up of a delicate pink rose with velvety petals,reflecting soft ambient light,Dark "
                  "green-toned light\n\nThe background consists of blurred pink roses and green foliage, creating a "
                  "dreamy and harmonious depth. \n\n(soft lighting, dim background, cinematic lighting, realistic "
                  "shading, gentle contrast, warm tones), ", ["29", 1]),
        "7": text("watermark, text", ["29", 1]),
        "20": node("LoadImage", "Load Image", image="example.png"),
        "38": scale_to_pixels(["20", 0]),
        "30": node("ImagePadForOutpaint", "Pad Image for Outpainting", left=40, top=40, right=40, bottom=128,
                   feathering=10, image=["38", 0]),
        "26": node("VAEEncodeForInpaint", "VAE Encode (for Inpainting)", grow_mask_by=10, pixels=["30", 0],
                   vae=["29", 2], mask=["30", 1]),
        "3": ksampler(476514576444494, 20, 7, "dpmpp_2m", "karras", 1, ["29", 0], ["6", 0], ["7", 0], ["26", 0]),
        "8": decode(["3", 0], ["29", 2]),
        "9": save(["8", 0]),
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_templates_convert_to_the_prompt_comfyuis_frontend_queues(name):
    converted = to_native(template(name), standin_registry())
    assert converted.issues == []
    assert converted.prompt == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_templates_keep_their_layout_for_the_editor(name):
    data = template(name)
    layout = to_native(data, standin_registry()).native["ui"]["nodes"]
    for ui_node in data["nodes"]:
        node_id = str(ui_node["id"])
        if node_id in EXPECTED[name]:
            assert layout[node_id]["pos"] == list(ui_node["pos"])
    seeds = [node_id for node_id, entry in EXPECTED[name].items() if entry["class_type"] == "KSampler"]
    assert all(layout[node_id]["randomize"] == ["seed"] for node_id in seeds)  # "randomize" or the legacy true


def test_standins_match_real_nodes():
    """Where the registry already has ComfyUI's node, the stand-in these tests use declares what it declares."""
    registry = builtin_registry()
    for standin in STANDINS:
        real = registry.get_comfy(standin.TYPE)
        if real is None:
            continue
        declared = [(s.name, s.kind, s.type, s.control_after_generate, s.image_upload, s.optional)
                    for s in standin.input_specs().values()]
        actual = [(s.name, s.kind, s.type, s.control_after_generate, s.image_upload, s.optional)
                  for s in real.input_specs().values()]
        assert actual == declared, standin.TYPE
        assert list(real.OUTPUTS.values()) == list(standin.OUTPUTS.values()), standin.TYPE
        assert real.DISPLAY_NAME == standin.DISPLAY_NAME, standin.TYPE
        for spec in standin.input_specs().values():
            if not spec.required:
                assert real.input_specs()[spec.name].default == spec.default, (standin.TYPE, spec.name)


# --- end to end ----------------------------------------------------------------------------------------------------


def nodegraph(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "nodegraph", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_templates_run_unchanged(tmp_path, tiny_checkpoint):
    """default.json and image2image.json as shipped, on the tiny checkpoint. The checkpoint name they ask for is
    mapped the two documented ways: a symlink in models/checkpoints named like the file (default.json), or
    `--set 14.ckpt_name=...` (image2image.json). Sizes and steps are cut with --set to keep the test fast."""
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "input").mkdir()
    (tmp_path / "models" / "checkpoints" / "v1-5-pruned-emaonly-fp16.safetensors").symlink_to(tiny_checkpoint)
    (tmp_path / "models" / "checkpoints" / "tiny.safetensors").symlink_to(tiny_checkpoint)
    Image.new("RGB", (96, 80), (200, 40, 40)).save(tmp_path / "input" / "example.png")
    for name in ("default", "image2image"):
        (tmp_path / f"{name}.json").write_bytes((TEMPLATES / f"{name}.json").read_bytes())

    run = nodegraph("run", "default.json", "--device", "cpu", "--set", "5.width=64", "--set", "5.height=64",
                    "--set", "3.steps=2", "--output", "out_default", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    run = nodegraph("run", "image2image.json", "--device", "cpu", "--set", "14.ckpt_name=tiny.safetensors",
                    "--set", "18.megapixels=0.01", "--set", "3.steps=2", "--output", "out_i2i", cwd=tmp_path)
    assert run.returncode == 0, run.stderr

    for folder, name, save_id in (("out_default", "default", "9"), ("out_i2i", "image2image", "9")):
        [png] = all_files(tmp_path / folder)
        assert png.name == "ComfyUI_00001_.png"
        chunks = png_workflows(png)
        assert chunks["prompt"][save_id]["class_type"] == "SaveImage"  # ComfyUI's: the API prompt that ran
        assert chunks["prompt"]["3"]["inputs"]["steps"] == 2
        workflow = chunks["workflow"]  # and the UI file, as ComfyUI's frontend hands it over
        assert [n["id"] for n in workflow["nodes"]] == [n["id"] for n in template(name)["nodes"]]
        with Image.open(png) as image:  # img2img: 96x80 scaled to 0.01 MP is 112x93, VAEEncode crops to 112x88
            assert image.size == ((64, 64) if name == "default" else (112, 88))

    rerun = nodegraph("run", "out_default/ComfyUI_00001_.png", "--device", "cpu", "--output", "out_again",
                      cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    [again] = all_files(tmp_path / "out_again")
    assert again.read_bytes() == (tmp_path / "out_default" / "ComfyUI_00001_.png").read_bytes()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_templates_validate_with_the_real_nodes_to_the_same_prompt(env, name):
    """With the files they ask for in place (empty placeholders: validation only lists names)."""
    data = template(name)
    for entry in EXPECTED[name].values():
        if entry["class_type"] == "CheckpointLoaderSimple":
            (env.checkpoints_dir / entry["inputs"]["ckpt_name"]).write_bytes(b"")
        if entry["class_type"] == "LoadImage":
            Image.new("RGB", (8, 8)).save(env.input_dir / entry["inputs"]["image"])
    valid = Executor(env).validate(data)
    assert valid.format == "ui" and valid.source is data and valid.prompt == EXPECTED[name]
    assert sorted(valid.nodes) == sorted(EXPECTED[name])


def test_an_api_prompt_runs_and_its_png_carries_it(tmp_path, tiny_checkpoint):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    os.link(tiny_checkpoint, tmp_path / "models" / "checkpoints" / "tiny.safetensors")
    prompt = json.loads(json.dumps(EXPECTED["default"]))
    (tmp_path / "prompt.json").write_text(json.dumps(prompt))
    run = nodegraph("run", "prompt.json", "--device", "cpu", "--set", "4.ckpt_name=tiny.safetensors",
                    "--set", "5.width=64", "--set", "5.height=64", "--set", "3.steps=2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    [png] = all_files(tmp_path / "output")
    chunks = png_workflows(png)
    assert chunks["prompt"]["4"]["inputs"]["ckpt_name"] == "tiny.safetensors" and "workflow" not in chunks


def test_a_bad_api_prompt_exits_2_naming_node_and_input_and_runs_nothing(tmp_path, capsys):
    prompt = json.loads(json.dumps(EXPECTED["default"]))
    prompt["8"]["inputs"]["vae"] = ["4", 5]
    prompt["5"]["class_type"] = "EmptyLatentImageXL"
    del prompt["8"]["inputs"]["samples"]  # found by validation, named by ComfyUI's class_type, not our TYPE
    (tmp_path / "prompt.json").write_text(json.dumps(prompt))
    assert main(["run", str(tmp_path / "prompt.json"), "--models", str(tmp_path), "--output",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "node '8' (VAEDecode), input 'vae': node '4' (CheckpointLoaderSimple) has no output 5" in err
    assert "node '5' (EmptyLatentImageXL): unknown node type 'EmptyLatentImageXL'" in err
    assert "node '8' (VAEDecode), input 'samples': required input is missing" in err
    assert not (tmp_path / "out").exists()


SDXL_TEMPLATES = {  # template -> (checkpoints it asks for, --set options that shrink it, its SaveImage node)
    "sdxl_simple_example": (["sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors"],
                            ["10.steps=4", "10.end_at_step=3", "11.steps=4", "11.start_at_step=3"], "19"),
    "sdxl_refiner_prompt_example": (["sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors"],
                                    ["10.steps=4", "10.end_at_step=3", "11.steps=4", "11.start_at_step=3"], "19"),
    "sdxlturbo_example": (["sd_xl_turbo_1.0_fp16.safetensors"], [], "27"),
}


@pytest.mark.parametrize("name", SDXL_TEMPLATES)
def test_comfyuis_sdxl_templates_run_unchanged(tmp_path_factory, name):
    """ComfyUI's SDXL templates as shipped (base -> refiner with KSamplerAdvanced and its PrimitiveNodes; the refiner
    with its own prompts; SDXL Turbo with SDTurboScheduler + SamplerCustom), on tiny random SDXL base and refiner
    files under the names they ask for. The latent is cut to 64x64 and the steps to 4 with --set."""
    root = tmp_path_factory.mktemp(name)
    models = root / "models" / "checkpoints"
    models.mkdir(parents=True)
    wanted, options, save_id = SDXL_TEMPLATES[name]
    for checkpoint_name in wanted:
        write_family_checkpoint(models / checkpoint_name, "sdxl_refiner" if "refiner" in checkpoint_name else "sdxl")
    (root / f"{name}.json").write_bytes((TEMPLATES / f"{name}.json").read_bytes())
    sets = [arg for option in ["5.width=64", "5.height=64", *options] for arg in ("--set", option)]
    run = nodegraph("run", f"{name}.json", "--device", "cpu", *sets, "--output", "out", cwd=root)
    assert run.returncode == 0, run.stderr
    [png] = all_files(root / "out")
    with Image.open(png) as image:
        assert image.size == (64, 64) and len(set(image.getdata())) > 1
    prompt = png_workflows(png)["prompt"]
    assert prompt[save_id]["class_type"] == "SaveImage"
    assert {node["inputs"]["ckpt_name"] for node in prompt.values() if node["class_type"] == "CheckpointLoaderSimple"} \
        == set(wanted)
