"""ComfyUI's image nodes as ComfyUI defines them: LoadImage (IMAGE and MASK), LoadImageMask, SaveImage and
PreviewImage PNGs (names, numbering, text chunks, quantization), and the scaling, padding, inverting, batching and
cropping nodes; with our own LoadImage, SaveImage and ImageScale beside them."""

import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine_fixtures import all_files, env, node, workflow  # noqa: F401
from nodegraph.executor import Executor
from nodegraph.nodes import RunContext, builtin_registry
from nodegraph.nodes.image import ComfyLoadImage, ComfySaveImage, LoadImage, LoadImageMask, PreviewImage, SaveImage
from nodegraph.nodes.image_ops import (ComfyImageScale, ImageBatch, ImageCrop, ImageInvert, ImagePadForOutpaint,
                                       ImageScale, ImageScaleBy, ImageScaleToTotalPixels)
from nodegraph.nodes.resize import crop_center_to_aspect
from nodegraph.workflow import InvalidWorkflow

PROMPT = {"3": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}}}
UI_WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 9, "type": "SaveImage"}], "version": 0.4, "note": "Grüße"}


def context(env, prompt=None, extra_pnginfo=None) -> RunContext:
    return RunContext(env, "node", {"version": 1, "nodes": {}}, prompt=prompt or {}, extra_pnginfo=extra_pnginfo)


def truncated(image: torch.Tensor) -> np.ndarray:
    """ComfyUI's quantization, written out independently: clip(255 * x, 0, 255) cast to uint8 (channels last)."""
    return np.clip(255.0 * image.permute(0, 2, 3, 1).numpy(), 0, 255).astype(np.uint8)


def png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG file, read with nothing but struct."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        chunks.append((kind, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def text_chunks(path: Path) -> list[tuple[str, str]]:
    return [tuple(part.decode("latin-1") for part in body.split(b"\0", 1)) for kind, body in png_chunks(path)
            if kind == b"tEXt"]


def zlib_level_class(path: Path) -> int:
    """The FLEVEL bits zlib writes into the first IDAT: 0 for level 0-1, 1 for 2-5, 2 for 6, 3 for 7-9."""
    first_idat = next(body for kind, body in png_chunks(path) if kind == b"IDAT")
    return first_idat[1] >> 6


def saved(env, result: dict, root: Path | None = None) -> list[Path]:
    root = root or env.output_dir
    return [root / ref["subfolder"] / ref["filename"] for ref in result["ui"]["images"]]


# --- LoadImage and LoadImageMask -------------------------------------------------------------------------------------


def test_comfy_load_image_gives_rgb_and_one_minus_alpha_as_mask(env):
    pixels = np.zeros((3, 4, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 10, 200, 255
    pixels[..., 3] = [[0, 51, 255, 128]] * 3
    Image.fromarray(pixels, "RGBA").save(env.input_dir / "clear.png")
    out = ComfyLoadImage().run(context(env), image="clear.png")
    assert out["IMAGE"].shape == (1, 3, 3, 4) and out["IMAGE"].dtype == torch.float32
    assert torch.equal(out["IMAGE"][0, :, 0, 0], torch.tensor([10, 200, 255]) / 255.0)
    assert out["MASK"].shape == (1, 3, 4)
    assert torch.equal(out["MASK"][0, 0], 1.0 - torch.tensor([0, 51, 255, 128]) / 255.0)  # 1 = was transparent


def test_comfy_load_image_without_alpha_gives_a_64x64_zero_mask(env):
    Image.new("RGB", (10, 6), (1, 2, 3)).save(env.input_dir / "opaque.jpg")
    out = ComfyLoadImage().run(context(env), image="opaque.jpg")
    assert out["IMAGE"].shape == (1, 3, 6, 10)
    assert out["MASK"].shape == (1, 64, 64) and not out["MASK"].any()


def test_a_palette_image_with_a_transparent_entry_masks_those_pixels(env):
    image = Image.new("P", (4, 2), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(env.input_dir / "keyed.png", transparency=1)
    mask = ComfyLoadImage().run(context(env), image="keyed.png")["MASK"]
    assert mask.tolist() == [[[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]


def test_an_animation_loads_as_a_batch_and_frames_of_another_size_are_skipped(env):
    frames = [Image.new("RGB", (8, 6), (value, 0, 0)) for value in (0, 100, 200)]
    frames[0].save(env.input_dir / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    pages = [Image.new("RGB", (8, 6), (10, 0, 0)), Image.new("RGB", (5, 5), (20, 0, 0)),
             Image.new("RGB", (8, 6), (30, 0, 0))]
    pages[0].save(env.input_dir / "pages.tiff", save_all=True, append_images=pages[1:])
    gif = ComfyLoadImage().run(context(env), image="anim.gif")
    assert gif["IMAGE"].shape == (3, 3, 6, 8) and gif["MASK"].shape == (3, 64, 64)
    assert [round(float(frame[0, 0, 0]) * 255) for frame in gif["IMAGE"]] == [0, 100, 200]
    tiff = ComfyLoadImage().run(context(env), image="pages.tiff")["IMAGE"]
    assert [round(float(frame[0, 0, 0]) * 255) for frame in tiff] == [10, 30]
    assert torch.equal(LoadImage().run(context(env), name="anim.gif")["image"], gif["IMAGE"])


def test_exif_rotation_turns_image_and_mask_alike(env):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    image = Image.new("RGBA", (6, 4), (10, 20, 30, 255))
    image.putpixel((0, 0), (10, 20, 30, 0))  # top left transparent: after the turn it is at the top right
    image.save(env.input_dir / "turned.png", exif=exif)
    out = ComfyLoadImage().run(context(env), image="turned.png")
    assert out["IMAGE"].shape == (1, 3, 6, 4) and out["MASK"].shape == (1, 6, 4)
    assert out["MASK"][0, 0, 3] == 1.0 and out["MASK"].sum() == 1.0


def test_32_bit_integer_images_are_scaled_by_one_255th_as_comfyui_does(env):
    Image.new("I", (3, 2), 51000).save(env.input_dir / "deep.tiff")  # 51000 / 255 = 200
    image = ComfyLoadImage().run(context(env), image="deep.tiff")["IMAGE"]
    assert torch.equal(image, torch.full((1, 3, 2, 3), 200 / 255.0))


def test_load_image_mask_inverts_alpha_but_not_the_colour_channels(env):
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2], pixels[..., 3] = 255, 51, 0, 204
    Image.fromarray(pixels, "RGBA").save(env.input_dir / "rgba.png")
    load = LoadImageMask()
    assert torch.allclose(load.run(context(env), image="rgba.png", channel="alpha")["MASK"],
                          torch.full((1, 2, 3), 1 - 204 / 255.0))
    assert torch.equal(load.run(context(env), image="rgba.png", channel="red")["MASK"], torch.ones(1, 2, 3))
    assert torch.equal(load.run(context(env), image="rgba.png", channel="green")["MASK"],
                       torch.full((1, 2, 3), 51 / 255.0))
    assert not load.run(context(env), image="rgba.png", channel="blue")["MASK"].any()


def test_load_image_mask_of_an_opaque_image_is_zero_at_its_own_size(env):
    Image.new("L", (5, 3), 102).save(env.input_dir / "grey.png")
    load = LoadImageMask()
    alpha = load.run(context(env), image="grey.png", channel="alpha")["MASK"]
    assert alpha.shape == (1, 3, 5) and not alpha.any()
    assert torch.equal(load.run(context(env), image="grey.png", channel="red")["MASK"], torch.full((1, 3, 5), 0.4))


def test_loaders_fingerprint_the_file_so_a_changed_file_is_read_again(env):
    Image.new("RGB", (4, 4)).save(env.input_dir / "a.png")
    before = [cls.fingerprint(env, {"image": "a.png", "name": "a.png"}) for cls in (ComfyLoadImage, LoadImageMask,
                                                                                     LoadImage)]
    Image.new("RGB", (8, 8)).save(env.input_dir / "a.png")
    stat = (env.input_dir / "a.png").stat()
    os.utime(env.input_dir / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = [cls.fingerprint(env, {"image": "a.png", "name": "a.png"}) for cls in (ComfyLoadImage, LoadImageMask,
                                                                                    LoadImage)]
    assert all(b != a for b, a in zip(before, after))


def test_comfy_load_image_is_declared_as_comfyui_declares_it(env):
    Image.new("RGB", (4, 4)).save(env.input_dir / "b.png")
    (env.input_dir / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(env.input_dir / "sub" / "c.webp")
    (env.input_dir / "notes.txt").write_text("not an image")
    registry = builtin_registry()
    assert registry.get_comfy("LoadImage") is ComfyLoadImage and registry.get("LoadImage") is LoadImage
    spec = ComfyLoadImage.input_specs()["image"]
    assert spec.image_upload and spec.required and spec.allowed_choices(env) == ["b.png", "sub/c.webp"]
    assert ComfyLoadImage.OUTPUTS == {"IMAGE": "IMAGE", "MASK": "MASK"} and ComfyLoadImage.DISPLAY_NAME == "Load Image"
    channel = LoadImageMask.input_specs()["channel"]
    assert channel.choices == ("alpha", "red", "green", "blue") and LoadImageMask.OUTPUTS == {"MASK": "MASK"}


@pytest.mark.parametrize("name", ["../outside.png", "/etc/hosts", "a\\b.png"])
def test_load_image_names_cannot_leave_the_input_folder(env, name):
    flow = workflow(load=node("ComfyUI.LoadImage", image=name), save=node("PreviewImage", images=["load", "IMAGE"]))
    with pytest.raises(InvalidWorkflow) as failure:
        Executor(env).run(flow)
    assert [(i.node_id, i.input, i.code) for i in failure.value.issues] == [("load", "image", "not_in_choices")]


# --- SaveImage and PreviewImage ---------------------------------------------------------------------------------------


def test_comfy_save_image_writes_comfyui_names_chunks_and_ui(env):
    images = torch.rand(2, 3, 5, 7)
    out = ComfySaveImage().run(context(env, PROMPT, {"workflow": UI_WORKFLOW, "extra": [1, 2]}), images=images,
                               filename_prefix="ComfyUI")
    assert out == {"ui": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
                                     {"filename": "ComfyUI_00002_.png", "subfolder": "", "type": "output"}]}}
    first = env.output_dir / "ComfyUI_00001_.png"
    # tEXt chunks in ComfyUI's order, each json.dumps of its value (ASCII, so a tEXt chunk suffices)
    assert text_chunks(first) == [("prompt", json.dumps(PROMPT)), ("workflow", json.dumps(UI_WORKFLOW)),
                                  ("extra", "[1, 2]")]
    assert json.loads(Image.open(first).text["workflow"]) == UI_WORKFLOW
    assert zlib_level_class(first) == 1  # compress_level 4


def test_comfy_save_image_quantizes_by_truncation_as_comfyui_does(env):
    values = torch.tensor([0.0, 0.999, 0.5, 1 / 255 - 1e-6, 1.5, -0.2, 0.25, 128 / 255])
    images = values.view(1, 1, 1, 8).repeat(1, 3, 2, 1)
    images = images * torch.tensor([1.0, 0.7, 0.3]).view(1, 3, 1, 1)
    ComfySaveImage().run(context(env, PROMPT), images=images, filename_prefix="q")
    ours = SaveImage().run(context(env), images=images, prefix="ours")
    written = np.asarray(Image.open(env.output_dir / "q_00001_.png"))
    assert np.array_equal(written, truncated(images)[0])
    assert written[0, :4, 0].tolist() == [0, 254, 127, 0]
    rounded = np.asarray(Image.open(saved(env, ours)[0]))  # our SaveImage rounds to the nearest value
    assert rounded[0, :4, 0].tolist() == [0, 255, 128, 1]


def test_loading_and_saving_round_trips_8_bit_pixels_exactly(env):
    pixels = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(env.input_dir / "noise.png")
    image = ComfyLoadImage().run(context(env), image="noise.png")["IMAGE"]
    out = ComfySaveImage().run(context(env, PROMPT), images=image, filename_prefix="again")
    assert np.array_equal(np.asarray(Image.open(saved(env, out)[0])), pixels)


def test_numbering_continues_after_the_highest_number_comfyui_would_see(env):
    for name in ("ComfyUI_00007_.png", "ComfyUI_00003_.webp", "ComfyUI_00012.png", "ComfyUI_notes.txt",
                 "ComfyUIx_00050_.png", "other_00099_.png"):
        (env.output_dir / name).write_bytes(b"")
    out = ComfySaveImage().run(context(env, PROMPT), images=torch.zeros(2, 3, 2, 2), filename_prefix="ComfyUI")
    # ComfyUI counts <prefix>_<number>_ files of any kind; "00012.png" is no number, other prefixes do not count
    assert [ref["filename"] for ref in out["ui"]["images"]] == ["ComfyUI_00008_.png", "ComfyUI_00009_.png"]


def test_a_prefix_may_name_sub_folders_and_fill_in_comfyui_variables(env):
    ctx = context(env, PROMPT)
    out = ComfySaveImage().run(ctx, images=torch.zeros(1, 3, 4, 6), filename_prefix="runs/day/cat")
    assert out["ui"]["images"] == [{"filename": "cat_00001_.png", "subfolder": "runs/day", "type": "output"}]
    out = ComfySaveImage().run(ctx, images=torch.zeros(2, 3, 4, 6), filename_prefix="size_%width%x%height%_%batch_num%")
    assert [ref["filename"] for ref in out["ui"]["images"]] == ["size_6x4_0_00001_.png", "size_6x4_1_00002_.png"]
    year = ComfySaveImage().run(ctx, images=torch.zeros(1, 3, 2, 2), filename_prefix="%year%-%month%/x")
    assert re.fullmatch(r"\d{4}-\d{2}", year["ui"]["images"][0]["subfolder"])


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/escape", "a/../../b", ""])
def test_comfy_save_prefix_cannot_leave_the_output_folder(env, prefix):
    flow = workflow(image=node("ComfyUI.LoadImage", image="x.png"),
                    save=node("ComfyUI.SaveImage", images=["image", "IMAGE"], filename_prefix=prefix))
    Image.new("RGB", (2, 2)).save(env.input_dir / "x.png")
    with pytest.raises(InvalidWorkflow) as failure:
        Executor(env).validate(flow)
    assert [(i.node_id, i.input) for i in failure.value.issues] == [("save", "filename_prefix")]


def test_comfy_save_prefix_cannot_follow_a_symlink_out_of_the_output_folder(env, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", env.output_dir / "link")
    Image.new("RGB", (2, 2)).save(env.input_dir / "x.png")
    flow = workflow(image=node("ComfyUI.LoadImage", image="x.png"),
                    save=node("ComfyUI.SaveImage", images=["image", "IMAGE"], filename_prefix="link/x"))
    with pytest.raises(InvalidWorkflow, match="outside"):
        Executor(env).run(flow)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_the_executor_passes_extra_pnginfo_and_the_api_prompt_into_comfyui_pngs(env):
    Image.new("RGB", (3, 3), (9, 9, 9)).save(env.input_dir / "x.png")
    flow = workflow(image=node("ComfyUI.LoadImage", image="x.png"),
                    save=node("ComfyUI.SaveImage", images=["image", "IMAGE"], filename_prefix="flow"))
    result = Executor(env).run(flow, extra_data={"extra_pnginfo": {"workflow": UI_WORKFLOW}})
    path = env.output_dir / result.outputs["save"]["images"][0]["filename"]
    chunks = dict(text_chunks(path))
    assert json.loads(chunks["workflow"]) == UI_WORKFLOW
    prompt = json.loads(chunks["prompt"])
    assert {item["class_type"] for item in prompt.values()} == {"LoadImage", "SaveImage"}


def test_an_extra_pnginfo_key_that_cannot_name_a_chunk_is_a_clear_error(env):
    with pytest.raises(ValueError, match="extra_pnginfo key"):
        ComfySaveImage().run(context(env, PROMPT, {"bad\nkey": 1}), images=torch.zeros(1, 3, 2, 2),
                             filename_prefix="x")


def test_our_save_image_keeps_its_inputs_and_embeds_the_workflow_as_submitted(env):
    assert list(SaveImage.input_specs()) == ["images", "prefix"] and SaveImage.COMFY_TYPE is None
    ctx = context(env)
    ctx.workflow = {"version": 1, "nodes": {"a": {"type": "X", "inputs": {"text": "Grüße"}}}}
    out = SaveImage().run(ctx, images=torch.zeros(1, 3, 2, 2), prefix="mine")
    assert out["ui"]["images"] == [{"filename": "mine_00001_.png", "subfolder": "", "type": "output"}]
    assert [key for key, _ in text_chunks(saved(env, out)[0])] == ["workflow"]
    assert json.loads(dict(text_chunks(saved(env, out)[0]))["workflow"]) == ctx.workflow


def test_preview_image_writes_comfyui_temp_files_with_its_chunks(env):
    out = PreviewImage().run(context(env, PROMPT, {"workflow": UI_WORKFLOW}), images=torch.rand(2, 3, 4, 4))
    refs = out["ui"]["images"]
    assert [ref["type"] for ref in refs] == ["temp", "temp"] and all(ref["subfolder"] == "" for ref in refs)
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", refs[0]["filename"])
    assert refs[1]["filename"] == refs[0]["filename"].replace("00001", "00002")
    path = env.temp_dir / refs[0]["filename"]
    assert [key for key, _ in text_chunks(path)] == ["prompt", "workflow"]
    assert zlib_level_class(path) == 0  # compress_level 1
    assert all_files(env.output_dir) == []
    assert builtin_registry().get_comfy("PreviewImage") is builtin_registry().get("PreviewImage") is PreviewImage


# --- scaling -------------------------------------------------------------------------------------------------------


def scale(image, method="nearest-exact", width=512, height=512, crop="disabled"):
    return ComfyImageScale().run(None, image=image, upscale_method=method, width=width, height=height,
                                 crop=crop)["IMAGE"]


def test_comfy_image_scale_does_not_antialias_and_ours_does():
    ramp = torch.tensor([0.0, 0.2, 0.4, 0.6]).view(1, 1, 1, 4).repeat(1, 3, 2, 1)
    # bilinear without antialiasing samples at the new pixel centres (0.5 and 2.5 source pixels)
    assert torch.allclose(scale(ramp, "bilinear", 2, 2)[0, 0, 0], torch.tensor([0.1, 0.5]))
    ours = ImageScale().run(None, image=ramp, width=2, height=2, method="bilinear", crop="disabled")["image"]
    assert not torch.allclose(ours[0, 0, 0], torch.tensor([0.1, 0.5]))  # the antialiasing filter reaches further


def test_a_zero_side_follows_the_other_sides_scale():
    image = torch.rand(1, 3, 10, 33)
    assert scale(image, width=0, height=4).shape == (1, 3, 4, 13)  # round(33 * 4 / 10)
    assert scale(image, width=66, height=0).shape == (1, 3, 20, 66)
    assert scale(image, width=0, height=0) is image


def test_center_crop_cuts_equal_rounded_margins_before_resizing():
    columns = torch.arange(10.0).view(1, 1, 1, 10).repeat(1, 3, 4, 1) / 10
    assert torch.equal(scale(columns, "nearest-exact", 4, 4, "center")[0, 0, 0], torch.tensor([3, 4, 5, 6]) / 10)
    tall = torch.arange(9.0).view(1, 9, 1).expand(1, 9, 4)  # 4 wide, 9 high, to a square: margins of (9 - 4) / 2
    assert crop_center_to_aspect(tall, 1.0)[0, :, 0].tolist() == [2, 3, 4, 5, 6]  # round(2.5) is 2, as in Python
    stretched = scale(torch.rand(1, 3, 4, 10), "bilinear", 4, 4, "disabled")
    assert stretched.shape == (1, 3, 4, 4)


def test_lanczos_is_pils_lanczos_on_the_truncated_8_bit_image():
    image = torch.rand(2, 3, 12, 17)
    expected = [np.asarray(Image.fromarray(frame, "RGB").resize((7, 5), Image.Resampling.LANCZOS)) for frame in
                truncated(image)]
    result = scale(image, "lanczos", 7, 5)
    assert torch.equal(result, torch.from_numpy(np.stack(expected).astype(np.float32) / 255.0).permute(0, 3, 1, 2))


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
def test_comfy_image_scale_is_torch_interpolation_without_antialiasing(method):
    image = torch.rand(1, 3, 9, 14)
    expected = F.interpolate(image, size=(20, 6), mode=method).clamp(0, 1)
    assert torch.equal(scale(image, method, 6, 20), expected)


def test_image_scale_by_rounds_each_side_as_python_does():
    image = torch.rand(1, 3, 7, 10)
    out = ImageScaleBy().run(None, image=image, upscale_method="bilinear", scale_by=1.5)["IMAGE"]
    assert out.shape == (1, 3, 10, 15)  # round(10.5) is 10
    with pytest.raises(ValueError, match="at least 1 pixel"):
        ImageScaleBy().run(None, image=torch.rand(1, 3, 7, 10), upscale_method="area", scale_by=0.01)


def test_image_scale_to_total_pixels_uses_comfyuis_rounding():
    run = ImageScaleToTotalPixels().run
    assert run(None, image=torch.rand(1, 3, 512, 512), upscale_method="area", megapixels=1.0)["IMAGE"].shape == (
        1, 3, 1024, 1024)
    # 0.25 MP of 640x480: int(0.25 * 2**20) = 262144 pixels -> scale sqrt(262144 / 307200) -> 591 x 443
    assert run(None, image=torch.rand(1, 3, 480, 640), upscale_method="nearest-exact",
               megapixels=0.25)["IMAGE"].shape == (1, 3, 443, 591)


def test_image2image_templates_scale_node_has_our_input_count():
    import comfyui_workflow_templates

    template = Path(comfyui_workflow_templates.__file__).parent / "templates" / "image2image.json"
    nodes = json.loads(template.read_text(encoding="utf-8"))["nodes"]
    scale_node = next(item for item in nodes if item["type"] == "ImageScaleToTotalPixels")
    constants = [s for s in ImageScaleToTotalPixels.input_specs().values() if s.kind == "constant"]
    assert len(scale_node["widgets_values"]) == len(constants)  # upscale_method, megapixels: no resolution_steps
    assert scale_node["widgets_values"][0] in constants[0].choices


def test_comfy_image_scale_is_declared_as_comfyui_declares_it():
    specs = ComfyImageScale.input_specs()
    assert list(specs) == ["image", "upscale_method", "width", "height", "crop"]
    assert specs["upscale_method"].choices == ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
    assert (specs["width"].minimum, specs["width"].maximum, specs["width"].default) == (0, 16384, 512)
    assert specs["crop"].choices == ("disabled", "center")
    assert builtin_registry().get_comfy("ImageScale") is ComfyImageScale
    assert list(ImageScale.input_specs()) == ["image", "width", "height", "method", "crop"]


# --- padding, inverting, batching, cropping ---------------------------------------------------------------------------


def feather_reference(height, width, left, top, right, bottom, feathering):
    """ComfyUI's outpainting mask inside the old picture, pixel by pixel, written out independently."""
    inner = np.zeros((height, width), dtype=np.float32)
    if not (feathering > 0 and feathering * 2 < height and feathering * 2 < width):
        return inner
    for i in range(height):
        for j in range(width):
            d = min(i if top else height, height - i if bottom else height,
                    j if left else width, width - j if right else width)
            if d < feathering:
                inner[i, j] = ((feathering - d) / feathering) ** 2
    return inner


@pytest.mark.parametrize("sides", [(16, 8, 24, 0), (0, 0, 8, 0), (8, 8, 8, 8)])
def test_pad_for_outpaint_puts_the_image_on_grey_and_feathers_the_mask_as_comfyui(sides):
    left, top, right, bottom = sides
    image = torch.rand(2, 3, 30, 40)
    out = ImagePadForOutpaint().run(None, image=image, left=left, top=top, right=right, bottom=bottom, feathering=10)
    canvas, mask = out["IMAGE"], out["MASK"]
    assert canvas.shape == (2, 3, 30 + top + bottom, 40 + left + right) and mask.shape == (1, 30 + top + bottom,
                                                                                              40 + left + right)
    assert torch.equal(canvas[..., top : top + 30, left : left + 40], image)
    border = torch.ones_like(mask, dtype=torch.bool)
    border[:, top : top + 30, left : left + 40] = False
    assert (canvas[:, :, border[0]] == 0.5).all() and (mask[border] == 1.0).all()
    assert np.array_equal(mask[0, top : top + 30, left : left + 40].numpy(),
                          feather_reference(30, 40, left, top, right, bottom, 10))


def test_pad_for_outpaint_does_not_feather_when_the_feather_reaches_half_the_picture():
    out = ImagePadForOutpaint().run(None, image=torch.rand(1, 3, 20, 60), left=8, top=8, right=0, bottom=0,
                                    feathering=10)
    assert not out["MASK"][0, 8:, 8:].any()
    first = ImagePadForOutpaint().run(None, image=torch.rand(1, 3, 30, 40), left=8, top=0, right=0, bottom=0,
                                      feathering=10)["MASK"][0, 5]
    assert first[8].item() == 1.0 and first[9].item() == pytest.approx(0.81)  # the first old column has d = 0


def test_image_invert():
    image = torch.rand(2, 3, 4, 4)
    assert torch.equal(ImageInvert().run(None, image=image)["IMAGE"], 1.0 - image)


def test_image_batch_joins_and_fits_the_second_to_the_first_size():
    first, second = torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert torch.equal(ImageBatch().run(None, image1=first, image2=second)["IMAGE"], torch.cat([first, second]))
    wide = torch.zeros(1, 3, 40, 80)
    wide[..., 20:60] = 1.0  # the centre band: what a centred square crop keeps
    joined = ImageBatch().run(None, image1=first, image2=wide)["IMAGE"]
    assert joined.shape == (3, 3, 16, 16) and torch.equal(joined[:2], first) and (joined[2] == 1.0).all()


def test_image_crop_clamps_the_corner_and_cuts_the_region_short_at_the_edges():
    image = torch.arange(6 * 8, dtype=torch.float32).view(1, 1, 6, 8).repeat(2, 3, 1, 1)
    crop = ImageCrop().run
    assert torch.equal(crop(None, image=image, width=3, height=2, x=1, y=2)["IMAGE"], image[..., 2:4, 1:4])
    assert crop(None, image=image, width=5, height=5, x=6, y=4)["IMAGE"].shape == (2, 3, 2, 2)
    assert torch.equal(crop(None, image=image, width=4, height=4, x=100, y=100)["IMAGE"], image[..., 5:, 7:])


def test_an_api_prompt_loads_scales_and_saves_with_comfyuis_nodes(env):
    Image.new("RGBA", (20, 10), (200, 100, 50, 255)).save(env.input_dir / "example.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "lanczos", "width": 8,
                                                     "height": 0, "crop": "disabled"}},
        "3": {"class_type": "InvertMask", "inputs": {"mask": ["1", 1]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "api/run"}},
        "5": {"class_type": "MaskPreview", "inputs": {"mask": ["3", 0]}},
    }
    result = Executor(env).run(prompt, extra_data={"extra_pnginfo": {"workflow": UI_WORKFLOW}})
    ref = result.outputs["4"]["images"][0]
    assert ref == {"filename": "run_00001_.png", "subfolder": "api", "type": "output"}
    path = env.output_dir / "api" / "run_00001_.png"
    assert Image.open(path).size == (8, 4)
    assert json.loads(dict(text_chunks(path))["prompt"]) == prompt
    preview = env.temp_dir / result.outputs["5"]["images"][0]["filename"]
    assert (np.asarray(Image.open(preview)) == 255).all()  # opaque: LoadImage's mask is 0, inverted 1
