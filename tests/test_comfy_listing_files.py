"""The server in ComfyUI's shapes: what it knows (object_info, system_stats, models, embeddings), files
(view, uploads) and the store behind them."""

import io
import json
import sqlite3
import struct

import pytest
from aiohttp import FormData
from PIL import Image, PngImagePlugin

from app_client import (png_bytes, refused, run, serving)
from engine_fixtures import env, sd_env  # noqa: F401 (fixtures)
from nodegraph.nodes import builtin_registry
from nodegraph.store import Store

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- what the server knows --------------------------------------------------------------------------------------


def test_object_info_in_comfyuis_shape(sd_env, tmp_path):
    (sd_env.input_dir / "photo.png").write_bytes(png_bytes())

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            loader = (await (await client.get("/object_info/CheckpointLoaderSimple")).json())["CheckpointLoaderSimple"]
            assert "tiny.safetensors" in loader["input"]["required"]["ckpt_name"][0]
            assert loader["output"] == ["MODEL", "CLIP", "VAE"] and loader["output_name"] == ["MODEL", "CLIP", "VAE"]
            assert loader["output_is_list"] == [False, False, False]
            assert (loader["name"], loader["display_name"], loader["output_node"]) == (
                "CheckpointLoaderSimple", "Load Checkpoint", False)
            assert {"description", "category", "python_module", "input_order"} <= set(loader)
            info = await (await client.get("/object_info")).json()
            sampler = info["KSampler"]
            assert sampler["input_order"]["required"] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                                         "positive", "negative", "latent_image", "denoise"]
            assert list(sampler["input"]["required"]) == sampler["input_order"]["required"]
            seed = sampler["input"]["required"]["seed"][1]
            assert seed["control_after_generate"] is True and seed["min"] == 0
            steps = sampler["input"]["required"]["steps"]
            assert steps[0] == "INT" and (steps[1]["default"], steps[1]["min"], steps[1]["max"]) == (20, 1, 10000)
            assert "euler" in sampler["input"]["required"]["sampler_name"][0]
            assert sampler["input"]["required"]["model"][0] == "MODEL"
            assert info["CLIPTextEncode"]["input"]["required"]["text"][1]["multiline"] is True
            image = info["LoadImage"]["input"]["required"]["image"]
            assert image[0] == ["photo.png"] and image[1]["image_upload"] is True
            assert info["SaveImage"]["output_node"] is True and info["SaveImage"]["output"] == []
            assert await (await client.get("/object_info/NoSuchNode")).json() == {}
            native = await (await client.get("/object_info", params={"namespace": "native"})).json()
            assert "ComfyUI.VAEDecode" in native and native["VAEDecode"]["name"] == "VAEDecode"
            assert set(native["VAEDecode"]["input"]["required"]) != set(info["VAEDecode"]["input"]["required"])
            await refused(await client.get("/object_info", params={"namespace": "klingon"}), 400, "namespace")
    run(scenario())


def test_object_info_follows_every_nodes_declaration(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            info = await (await client.get("/object_info")).json()
            registry = builtin_registry()
            assert set(info) == {node.COMFY_TYPE for node in registry.comfy_nodes()}
            for node in registry.comfy_nodes():
                entry, specs = info[node.COMFY_TYPE], node.input_specs()
                assert entry["input_order"].get("required", []) + entry["input_order"].get("optional", []) == [
                    name for name in specs if not specs[name].optional] + [n for n in specs if specs[n].optional]
                assert entry["output"] == list(node.OUTPUTS.values()) and entry["output_name"] == list(node.OUTPUTS)
                for section in entry["input"].values():
                    for name, declared in section.items():
                        spec = specs[name]
                        if spec.kind == "constant" and not spec.required:
                            assert declared[1]["default"] == spec.default, (node.COMFY_TYPE, name)
                        if spec.multiple_of is not None:
                            assert declared[1]["step"] == spec.multiple_of, (node.COMFY_TYPE, name)
    run(scenario())


def test_system_stats_in_comfyuis_shape(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            stats = await (await client.get("/system_stats")).json()
            assert set(stats["system"]) >= {"os", "python_version", "embedded_python", "comfyui_version",
                                            "pytorch_version", "argv", "ram_total", "ram_free"}
            device = stats["devices"][0]
            assert set(device) == {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
                                   "torch_vram_free"}
            assert device["type"] == "cpu" and device["vram_total"] >= device["vram_free"] > 0
    run(scenario())


def safetensors_file(path, metadata: dict | None, tensor_bytes: bytes = b"\0" * 16) -> None:
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(tensor_bytes)]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    encoded = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + tensor_bytes)


def test_model_folders_embeddings_and_safetensors_metadata(sd_env, tmp_path):
    safetensors_file(sd_env.models_dir / "loras" / "style.safetensors", {"ss_network_dim": "8"}, b"garbage")
    safetensors_file(sd_env.models_dir / "loras" / "plain.safetensors", None)
    safetensors_file(sd_env.models_dir / "embeddings" / "sub" / "easy-negative.safetensors", None)

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            kinds = await (await client.get("/models")).json()
            assert {"checkpoints", "loras", "vae", "embeddings", "upscale_models", "controlnet"} <= set(kinds)
            assert "tiny.safetensors" in await (await client.get("/models/checkpoints")).json()
            assert await (await client.get("/models/loras")).json() == [  # the packaged demo LoRA too
                "demo-ring.safetensors", "plain.safetensors", "style.safetensors"]
            await refused(await client.get("/models/passwords"), 404, "passwords")
            assert await (await client.get("/embeddings")).json() == ["demo-sunset", "sub/easy-negative"]
            metadata = await client.get("/view_metadata/loras", params={"filename": "style.safetensors"})
            assert await metadata.json() == {"ss_network_dim": "8"}  # the header alone: its tensor bytes are garbage
            await refused(await client.get("/view_metadata/loras", params={"filename": "plain.safetensors"}), 404, "")
            await refused(await client.get("/view_metadata/loras", params={"filename": "nope.safetensors"}), 404, "")
            for bad in ("../checkpoints/tiny.safetensors", "/etc/x.safetensors", "a\\b.safetensors"):
                response = await client.get("/view_metadata/loras", params={"filename": bad})
                assert response.status in (400, 404), bad
    run(scenario())


# --- files ----------------------------------------------------------------------------------------------------------


def rgba_png(size=(8, 8), alpha=128, text: dict | None = None) -> bytes:
    image = Image.new("RGBA", size, (200, 100, 50, alpha))
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_view_previews_and_channels_as_comfyui(env, tmp_path):
    (env.output_dir / "shot.png").write_bytes(rgba_png())
    (env.input_dir / "in.png").write_bytes(png_bytes(color=(0, 255, 0)))

    async def scenario():
        async with serving(env, tmp_path) as client:
            async def image(**params):
                response = await client.get("/view", params=params)
                assert response.status == 200, await response.text()
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                return response.headers["Content-Type"], Image.open(io.BytesIO(await response.read()))

            kind, webp = await image(filename="shot.png", preview="webp;50")
            assert kind == "image/webp" and webp.format == "WEBP"
            kind, jpeg = await image(filename="shot.png", preview="jpeg;80")
            assert kind == "image/jpeg" and jpeg.mode == "RGB"
            kind, _ = await image(filename="shot.png", preview="jpeg;80", channel="rgba")
            assert kind == "image/webp"  # an alpha channel asked for: webp, as ComfyUI
            kind, rgb = await image(filename="shot.png", channel="rgb")
            assert kind == "image/png" and rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (200, 100, 50)
            _, alpha = await image(filename="shot.png", channel="a")
            assert alpha.mode == "RGBA" and alpha.getpixel((0, 0)) == (0, 0, 0, 128)
            _, green = await image(filename="in.png [input]")  # ComfyUI's annotated name
            assert green.convert("RGB").getpixel((0, 0)) == (0, 255, 0)
            await refused(await client.get("/view", params={"filename": "shot.png", "channel": "cmyk"}), 400, "channel")
    run(scenario())


def test_upload_image_to_a_folder_type_and_subfolder(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            async def upload(data, **fields):
                form = FormData(quote_fields=False)
                form.add_field("image", data, filename="pic.png", content_type="image/png")
                for key, value in fields.items():
                    form.add_field(key, value)
                response = await client.post("/upload/image", data=form)
                assert response.status == 200, await response.text()
                return await response.json()

            assert await upload(png_bytes(), type="temp", subfolder="clips") == {"name": "pic.png",
                                                                                 "subfolder": "clips", "type": "temp"}
            assert (env.temp_dir / "clips" / "pic.png").read_bytes() == png_bytes()
            blue = png_bytes(color=(0, 0, 255))
            assert (await upload(blue, type="temp", subfolder="clips"))["name"] == "pic (1).png"
            assert (await upload(blue, type="temp", subfolder="clips", overwrite="true"))["name"] == "pic.png"
            assert (env.temp_dir / "clips" / "pic.png").read_bytes() == blue
            form = FormData(quote_fields=False)
            form.add_field("image", png_bytes(), filename="pic.png")
            form.add_field("type", "../models")
            await refused(await client.post("/upload/image", data=form), 400, "type")
    run(scenario())


def test_upload_mask_puts_the_masks_alpha_on_the_original(env, tmp_path):
    (env.input_dir / "photo.png").write_bytes(rgba_png(alpha=255, text={"parameters": "kept"}))
    mask = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, 4, 8))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")

    async def scenario():
        async with serving(env, tmp_path) as client:
            form = FormData(quote_fields=False)
            form.add_field("image", buffer.getvalue(), filename="clipspace-mask-1.png", content_type="image/png")
            form.add_field("original_ref", json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"}))
            form.add_field("type", "input")
            form.add_field("subfolder", "clipspace")
            response = await client.post("/upload/mask", data=form)
            assert await response.json() == {"name": "clipspace-mask-1.png", "subfolder": "clipspace", "type": "input"}
            with Image.open(env.input_dir / "clipspace" / "clipspace-mask-1.png") as result:
                assert result.mode == "RGBA" and result.text["parameters"] == "kept"
                assert result.getpixel((1, 1)) == (200, 100, 50, 255) and result.getpixel((6, 1)) == (200, 100, 50, 0)
    run(scenario())


def test_upload_mask_refuses_what_it_cannot_confine_or_combine(env, tmp_path):
    (env.input_dir / "photo.png").write_bytes(rgba_png())
    (tmp_path / "secret.png").write_bytes(rgba_png())

    async def scenario():
        async with serving(env, tmp_path) as client:
            async def post(reference, mask=None):
                form = FormData(quote_fields=False)
                form.add_field("image", mask or rgba_png(), filename="m.png")
                form.add_field("original_ref", reference if isinstance(reference, str) else json.dumps(reference))
                return await client.post("/upload/mask", data=form)

            for reference in ({"filename": "../secret.png", "type": "input"}, {"filename": "/etc/passwd"},
                              {"filename": "photo.png", "subfolder": "../..", "type": "input"},
                              {"filename": "photo.png", "type": "models"}):
                assert (await post(reference)).status == 400, reference
            await refused(await post("not json"), 400, "original_ref")
            await refused(await post({"filename": "photo.png", "type": "input"}, rgba_png(size=(4, 4))), 400, "size")
            await refused(await post({"filename": "missing.png", "type": "input"}), 404, "missing")
            assert sorted(p.name for p in env.input_dir.iterdir()) == ["photo.png"]
    run(scenario())


# --- the store ------------------------------------------------------------------------------------------------------


OLD_SCHEMA = """
CREATE TABLE prompts (
    number INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT NOT NULL UNIQUE, client_id TEXT, workflow TEXT NOT NULL,
    status TEXT NOT NULL, queued_at REAL NOT NULL, started_at REAL, finished_at REAL,
    outputs TEXT NOT NULL DEFAULT '{}', error TEXT, messages TEXT NOT NULL DEFAULT '[]',
    timings TEXT NOT NULL DEFAULT '{}');
CREATE INDEX prompts_by_status ON prompts (status, number);
INSERT INTO prompts (prompt_id, client_id, workflow, status, queued_at, finished_at, outputs)
    VALUES ('done', 'me', '{"version": 1, "nodes": {}}', 'success', 1.0, 2.0, '{"save": {"images": []}}');
INSERT INTO prompts (prompt_id, client_id, workflow, status, queued_at)
    VALUES ('waiting', 'me', '{"version": 1, "nodes": {}}', 'pending', 3.0);
"""


def test_a_database_of_the_first_schema_is_migrated_on_open(tmp_path):
    path = tmp_path / "nodegraph.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA)
    store = Store(path)
    done = store.finished("done").history_entry()
    assert done["prompt"] == [1, "done", {}, {}, []] and done["status"]["status_str"] == "success"
    assert done["format"] == "native"
    assert store.take_next(timeout=0).prompt_id == "waiting"  # its place in line kept
    added = store.enqueue({"version": 1, "nodes": {}}, "me", prompt={"1": {}}, extra_data={"client_id": "me"},
                          outputs_to_execute=["1"], front=True, format="api")
    assert store.get(added.prompt_id).queue_item() == [-3, added.prompt_id, {"1": {}}, {"client_id": "me"}, ["1"]]
    store.close()
    Store(path).close()  # opening a migrated file again changes nothing
