"""Reading the workflows PNGs carry: ours ("workflow", native) and ComfyUI's ("prompt" API, "workflow" UI)."""

import json
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from nodegraph.formats import png_workflows, read_workflow_file
from nodegraph.workflow import InvalidWorkflow, read_workflow_and_ui

NATIVE = {"version": 1, "nodes": {"a": {"type": "EmptyLatent", "inputs": {}}}}
API = {"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}
UI = {"nodes": [{"id": 3, "type": "KSampler", "widgets_values": [1, "fixed"]}], "links": [], "version": 0.4}


def png_with(path, **chunks) -> bytes:
    info = PngImagePlugin.PngInfo()
    for name, value in chunks.items():
        info.add_text(name, value if isinstance(value, str) else json.dumps(value))
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path.read_bytes()


def test_ours_runs_its_native_workflow(tmp_path):
    png_with(tmp_path / "ours.png", workflow=NATIVE)
    assert read_workflow_and_ui(tmp_path / "ours.png") == (NATIVE, None)


def test_comfyuis_runs_the_prompt_that_ran_and_keeps_the_ui_workflow_to_embed(tmp_path):
    png_with(tmp_path / "comfy.png", prompt=API, workflow=UI)
    assert read_workflow_and_ui(tmp_path / "comfy.png") == (API, UI)
    assert read_workflow_file(tmp_path / "comfy.png") == API


def test_a_png_with_only_the_ui_workflow_runs_that(tmp_path):
    png_with(tmp_path / "ui.png", workflow=UI)
    assert read_workflow_and_ui(tmp_path / "ui.png") == (UI, UI)


def test_a_png_with_only_the_prompt_runs_that(tmp_path):
    png_with(tmp_path / "api.png", prompt=API)
    assert read_workflow_and_ui(tmp_path / "api.png") == (API, None)


def test_json_files_of_any_format_are_read_as_they_are(tmp_path):
    for name, data in (("native", NATIVE), ("api", API), ("ui", UI)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        assert read_workflow_file(tmp_path / f"{name}.json") == data
    assert read_workflow_and_ui(tmp_path / "ui.json")[1] == UI


def test_a_png_with_neither_is_refused_clearly(tmp_path):
    png_with(tmp_path / "plain.png", parameters="a cat, Steps: 20")  # A1111's chunk: not a workflow
    with pytest.raises(InvalidWorkflow) as error:
        read_workflow_file(tmp_path / "plain.png")
    assert "needs a 'workflow' chunk" in str(error.value) and "'prompt'" in str(error.value)
    assert error.value.issues[0].code == "unreadable"


def test_png_workflows_parses_the_workflow_chunks_from_a_path_or_bytes(tmp_path):
    data = png_with(tmp_path / "comfy.png", prompt=API, workflow=UI, parameters="not json")
    assert png_workflows(tmp_path / "comfy.png") == {"prompt": API, "workflow": UI}
    assert png_workflows(data) == {"prompt": API, "workflow": UI}
    assert png_workflows(png_with(tmp_path / "plain.png")) == {}


def test_compressed_and_international_text_chunks_are_read(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", json.dumps(UI), zip=True)  # zTXt
    info.add_itxt("prompt", json.dumps({"3": {"class_type": "CLIPTextEncode", "inputs": {"text": "café"}}},
                                       ensure_ascii=False), zip=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "zipped.png", pnginfo=info)
    found = png_workflows(tmp_path / "zipped.png")
    assert found["workflow"] == UI and found["prompt"]["3"]["inputs"]["text"] == "café"


def test_chunks_after_the_pixels_are_read_too(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "late.png")
    data = (tmp_path / "late.png").read_bytes()
    body = b"prompt\0" + json.dumps(API).encode()
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    iend = data.rindex(b"IEND") - 4
    assert png_workflows(data[:iend] + chunk + data[iend:]) == {"prompt": API}


def test_not_a_png_is_a_value_error():
    with pytest.raises(ValueError, match="not a PNG"):
        png_workflows(b"GIF89a....")
