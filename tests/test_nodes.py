"""The built-in nodes on a small random checkpoint: what re-runs, determinism, img2img, previews, interrupts."""

import json
import os

import pytest
import torch
from PIL import Image

import nodegraph.nodes.image as image_nodes
import nodegraph.nodes.loaders as loaders
from engine_fixtures import CHECKPOINT_NAME, all_files, env, img2img, node, sd_env, txt2img  # noqa: F401
from nodegraph.executor import Executor, Interrupted, NodeFailed
from nodegraph.nodes import Environment, RunContext, builtin_registry
from nodegraph.nodes.image_ops import ImageScale
from nodegraph.nodes.pixels import to_pil, to_tensor
from nodegraph.nodes.sampling import latent_preview


@pytest.fixture
def load_count(monkeypatch):
    """How often a checkpoint file was actually loaded."""
    calls = []
    real = loaders.load_checkpoint

    def counting_load(path, **kwargs):
        calls.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(loaders, "load_checkpoint", counting_load)
    return calls


def save_input_image(env: Environment, name: str, size: tuple[int, int], color) -> None:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 4):  # some structure, so the VAE sees more than a flat colour
        image.putpixel((x, x % size[1]), (255, 255, 255))
    image.save(env.input_dir / name)


def test_our_own_nodes_keep_their_names_inputs_and_outputs_in_native_files():
    described = builtin_registry().describe(Environment())
    ours = {name: (list(info["inputs"]), info["outputs"]) for name, info in described.items()
            if builtin_registry().get(name).NATIVE}
    assert ours == {
        "LoadCheckpoint": (["name"], {"model": "MODEL", "clip": "CLIP", "vae": "VAE"}),
        "CLIPEncode": (["clip", "text"], {"conditioning": "CONDITIONING"}),
        "EmptyLatent": (["width", "height", "batch_size"], {"latent": "LATENT"}),
        "DDPMSample": (["model", "positive", "negative", "latent", "seed", "steps", "cfg", "denoise"],
                       {"latent": "LATENT"}),
        "VAEEncode": (["vae", "image"], {"latent": "LATENT"}),
        "VAEDecode": (["vae", "latent"], {"image": "IMAGE"}),
        "LoadImage": (["name"], {"image": "IMAGE"}),
        "SaveImage": (["images", "prefix"], {}),
        "ImageScale": (["image", "width", "height", "method", "crop"], {"image": "IMAGE"}),
    }
    json.dumps(described)


# ComfyUI's core nodes as its nodes.py declares them: class_type -> (inputs in order, output names = types)
COMFYUI_CORE_NODES = {
    "CheckpointLoaderSimple": (["ckpt_name"], ["MODEL", "CLIP", "VAE"]),
    "VAELoader": (["vae_name"], ["VAE"]),
    "CLIPTextEncode": (["text", "clip"], ["CONDITIONING"]),
    "CLIPTextEncodeSDXL": (["clip", "width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g",
                            "text_l"], ["CONDITIONING"]),
    "CLIPTextEncodeSDXLRefiner": (["ascore", "width", "height", "text", "clip"], ["CONDITIONING"]),
    "ConditioningCombine": (["conditioning_1", "conditioning_2"], ["CONDITIONING"]),
    "ConditioningConcat": (["conditioning_to", "conditioning_from"], ["CONDITIONING"]),
    "ConditioningAverage": (["conditioning_to", "conditioning_from", "conditioning_to_strength"], ["CONDITIONING"]),
    "ConditioningSetArea": (["conditioning", "width", "height", "x", "y", "strength"], ["CONDITIONING"]),
    "ConditioningSetMask": (["conditioning", "mask", "strength", "set_cond_area"], ["CONDITIONING"]),
    "ConditioningZeroOut": (["conditioning"], ["CONDITIONING"]),
    "EmptyLatentImage": (["width", "height", "batch_size"], ["LATENT"]),
    "LatentUpscale": (["samples", "upscale_method", "width", "height", "crop"], ["LATENT"]),
    "LatentUpscaleBy": (["samples", "upscale_method", "scale_by"], ["LATENT"]),
    "LatentFromBatch": (["samples", "batch_index", "length"], ["LATENT"]),
    "RepeatLatentBatch": (["samples", "amount"], ["LATENT"]),
    "LatentComposite": (["samples_to", "samples_from", "x", "y", "feather"], ["LATENT"]),
    "SetLatentNoiseMask": (["samples", "mask"], ["LATENT"]),
    "VAEDecode": (["samples", "vae"], ["IMAGE"]),
    "VAEEncode": (["pixels", "vae"], ["LATENT"]),
    "VAEEncodeForInpaint": (["pixels", "vae", "mask", "grow_mask_by"], ["LATENT"]),
    "VAEDecodeTiled": (["samples", "vae", "tile_size", "overlap", "temporal_size", "temporal_overlap"], ["IMAGE"]),
    "VAEEncodeTiled": (["pixels", "vae", "tile_size", "overlap", "temporal_size", "temporal_overlap"], ["LATENT"]),
    "LoadImage": (["image"], ["IMAGE", "MASK"]),
    "LoadImageMask": (["image", "channel"], ["MASK"]),
    "ImageScale": (["image", "upscale_method", "width", "height", "crop"], ["IMAGE"]),
    "ImageScaleBy": (["image", "upscale_method", "scale_by"], ["IMAGE"]),
    "ImageScaleToTotalPixels": (["image", "upscale_method", "megapixels"], ["IMAGE"]),
    "ImagePadForOutpaint": (["image", "left", "top", "right", "bottom", "feathering"], ["IMAGE", "MASK"]),
    "ImageInvert": (["image"], ["IMAGE"]),
    "ImageBatch": (["image1", "image2"], ["IMAGE"]),
    "ImageCrop": (["image", "width", "height", "x", "y"], ["IMAGE"]),
    "SaveImage": (["images", "filename_prefix"], []),
    "PreviewImage": (["images"], []),
    "SaveLatent": (["samples", "filename_prefix"], []),
    "LoadLatent": (["latent"], ["LATENT"]),
    "KSampler": (["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                  "latent_image", "denoise"], ["LATENT"]),
    "KSamplerAdvanced": (["model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler",
                          "positive", "negative", "latent_image", "start_at_step", "end_at_step",
                          "return_with_leftover_noise"], ["LATENT"]),
}


def test_comfyuis_core_nodes_have_its_class_names_input_order_and_outputs():
    registry = builtin_registry()
    found = {}
    for class_type in COMFYUI_CORE_NODES:
        node = registry.get_comfy(class_type)
        found[class_type] = None if node is None else (list(node.input_specs()), list(node.OUTPUTS))
    assert found == COMFYUI_CORE_NODES
    outputs = {name: registry.get_comfy(name).OUTPUT_NODE for name in ("SaveImage", "PreviewImage", "SaveLatent")}
    assert outputs == {"SaveImage": True, "PreviewImage": True, "SaveLatent": True}


def test_a_comfyui_name_that_is_also_ours_is_a_second_declaration_of_the_same_job():
    registry = builtin_registry()
    for name in ("VAEDecode", "VAEEncode", "SaveImage", "LoadImage", "ImageScale"):
        ours, theirs = registry.get(name), registry.get_comfy(name)
        assert ours.NATIVE and ours.COMFY_TYPE is None, name
        assert theirs.TYPE == f"ComfyUI.{name}" and registry.get(theirs.TYPE) is theirs, name


def test_node_listing_offers_the_checkpoints_in_the_models_folder(sd_env):
    described = builtin_registry().describe(sd_env)
    assert described["LoadCheckpoint"]["inputs"]["name"]["choices"] == ["demo-shapes.safetensors", CHECKPOINT_NAME]
    assert described["DDPMSample"]["inputs"]["steps"] == {
        "kind": "constant", "type": "INT", "required": False, "default": 20, "min": 1, "max": 1000,
        "description": "sampler steps (for the full schedule)"}


def test_a_new_seed_reruns_exactly_the_sampler_decoder_and_saver(sd_env, load_count):
    executor = Executor(sd_env)
    first = executor.run(txt2img(seed=1))
    assert first.executed == ["ckpt", "empty", "neg", "pos", "sample", "decode", "save"]
    second = executor.run(txt2img(seed=2))
    assert second.executed == ["sample", "decode", "save"]
    assert len(all_files(sd_env.output_dir)) == 2
    assert len(load_count) == 1


def test_a_new_prompt_also_reruns_that_clip_encode(sd_env):
    executor = Executor(sd_env)
    executor.run(txt2img(seed=1, prompt="a red circle"))
    result = executor.run(txt2img(seed=2, prompt="a blue square"))
    assert result.executed == ["pos", "sample", "decode", "save"]


def test_the_checkpoint_is_loaded_once_while_its_file_is_unchanged(env, tiny_checkpoint, load_count):
    path = env.checkpoints_dir / CHECKPOINT_NAME
    path.write_bytes(tiny_checkpoint.read_bytes())  # a copy of our own: touching it must not touch the shared file
    executor = Executor(env)
    executor.run(txt2img(seed=1))
    executor.run(txt2img(seed=2, prompt="another prompt"))
    assert len(load_count) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert executor.run(txt2img(seed=2, prompt="another prompt")).executed[0] == "ckpt"
    assert len(load_count) == 2


def test_same_workflow_and_seed_give_byte_identical_pngs(sd_env):
    Executor(sd_env).run(txt2img(seed=5))
    Executor(sd_env).run(txt2img(seed=5))  # a fresh executor: nothing cached
    Executor(sd_env).run(txt2img(seed=6))
    first, second, other = all_files(sd_env.output_dir)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_saved_pngs_embed_the_workflow_and_are_numbered_on(sd_env):
    flow = txt2img(prefix="runs/cat")
    flow["ui"] = {"positions": {"ckpt": [10, 20]}}
    result = Executor(sd_env).run(flow)
    assert result.outputs["save"] == {"images": [{"filename": "cat_00001_.png", "subfolder": "runs", "type": "output"}]}
    Executor(sd_env).run(flow)
    assert [p.name for p in all_files(sd_env.output_dir / "runs")] == ["cat_00001_.png", "cat_00002_.png"]
    with Image.open(sd_env.output_dir / "runs" / "cat_00001_.png") as image:
        assert json.loads(image.text["workflow"]) == flow
        assert image.size == (64, 64)


def test_a_batch_saves_one_png_per_image(sd_env):
    flow = txt2img()
    flow["nodes"]["empty"]["inputs"]["batch_size"] = 2
    result = Executor(sd_env).run(flow)
    assert len(result.outputs["save"]["images"]) == 2


def test_the_sampler_reports_each_step_with_a_small_preview(sd_env):
    events = []
    Executor(sd_env).run(txt2img(steps=3, size=64), on_event=events.append)
    progress = [e for e in events if e.type == "progress"]
    assert [(e.node_id, e.step, e.total) for e in progress] == [("sample", 1, 3), ("sample", 2, 3), ("sample", 3, 3)]
    assert all(isinstance(e.preview, Image.Image) and e.preview.size == (8, 8) for e in progress)


def test_interrupt_during_sampling_stops_it_and_the_executor_stays_usable(sd_env):
    executor = Executor(sd_env)
    steps = []

    def interrupt_at_first_step(event):
        if event.type == "progress":
            steps.append(event.step)
            executor.interrupt()

    with pytest.raises(Interrupted):
        executor.run(txt2img(steps=3), on_event=interrupt_at_first_step)
    assert steps == [1]
    assert all_files(sd_env.output_dir) == []
    result = executor.run(txt2img(steps=3))
    assert result.executed == ["sample", "decode", "save"]
    assert len(all_files(sd_env.output_dir)) == 1


def test_a_failing_load_leaves_the_executor_usable(sd_env):
    (sd_env.checkpoints_dir / "corrupt.safetensors").write_bytes(b"not a checkpoint")
    executor = Executor(sd_env)
    with pytest.raises(NodeFailed) as failure:
        executor.run(txt2img(checkpoint="corrupt.safetensors"))
    assert failure.value.node_id == "ckpt" and "corrupt" in failure.value.message
    assert len(executor.cache) == 0  # the checkpoint runs first (ids in order); its failure cached nothing
    assert executor.run(txt2img()).outputs["save"]["images"]


def test_img2img_with_full_denoise_ignores_the_input_and_lower_denoise_keeps_it(sd_env):
    save_input_image(sd_env, "black.png", (64, 64), (0, 0, 0))
    save_input_image(sd_env, "white.png", (64, 64), (250, 250, 250))
    executor = Executor(sd_env)

    def output_of(image_name: str, denoise: float) -> bytes:
        result = executor.run(img2img(image=image_name, denoise=denoise, steps=4))
        saved = result.outputs["save"]["images"][0]
        with Image.open(sd_env.output_dir / saved["filename"]) as image:
            return image.tobytes()  # the pixels: the embedded workflows differ by image name

    assert output_of("black.png", 1.0) == output_of("white.png", 1.0)
    assert output_of("black.png", 0.5) != output_of("white.png", 0.5)


def test_img2img_crops_sides_that_are_not_multiples_of_8_centred(sd_env):
    save_input_image(sd_env, "odd.png", (70, 61), (30, 90, 200))
    result = Executor(sd_env).run(img2img(image="odd.png", denoise=0.5, steps=2))
    with Image.open(sd_env.output_dir / result.outputs["save"]["images"][0]["filename"]) as image:
        assert image.size == (64, 56)


def test_image_scale_stretches_or_crops_to_keep_the_aspect_ratio():
    image = torch.zeros(1, 3, 40, 80)
    image[..., :, 20:60] = 1.0  # a white band in the middle half
    stretched = ImageScale().run(None, image=image, width=32, height=32, method="bilinear", crop="disabled")["image"]
    cropped = ImageScale().run(None, image=image, width=32, height=32, method="area", crop="center")["image"]
    assert stretched.shape == cropped.shape == (1, 3, 32, 32)
    assert cropped.mean() == 1.0  # the centred square is all band
    assert 0.4 < stretched.mean() < 0.6


def test_preview_image_writes_to_the_temp_folder_only(sd_env):
    flow = txt2img()
    flow["nodes"]["save"] = node("PreviewImage", images=["decode", "image"])
    result = Executor(sd_env).run(flow)
    assert result.outputs["save"]["images"][0]["type"] == "temp"
    assert all_files(sd_env.output_dir) == [] and len(all_files(sd_env.temp_dir)) == 1


def test_load_image_and_save_round_trip_pixels_exactly(env):
    image = Image.new("RGB", (5, 3))
    image.putdata([(i * 10, 255 - i * 10, i) for i in range(15)])
    assert to_pil(to_tensor(image))[0].tobytes() == image.tobytes()


def test_load_image_drops_transparency_and_applies_exif_rotation(env):
    image = Image.new("RGBA", (6, 4), (10, 20, 30, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.convert("RGB").save(env.input_dir / "rotated.jpg", exif=exif)
    image.save(env.input_dir / "clear.png")
    ctx = RunContext(env, "load", {})
    assert image_nodes.LoadImage().run(ctx, name="rotated.jpg")["image"].shape == (1, 3, 6, 4)
    assert image_nodes.LoadImage().run(ctx, name="clear.png")["image"].shape == (1, 3, 4, 6)


def test_latent_preview_is_one_rgb_pixel_per_latent_cell():
    preview = latent_preview(torch.randn(4, 5, 7))
    assert preview.mode == "RGB" and preview.size == (7, 5)
