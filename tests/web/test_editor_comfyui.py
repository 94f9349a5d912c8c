"""The editor opens ComfyUI's files: its own SD1.5 templates (comfyui-workflow-templates 0.1.95, written by ComfyUI's
people, not by us), API prompts, and the PNGs ComfyUI writes; and a template queued from the editor makes an image.

What is expected is read from the template files themselves and from the server's ComfyUI /object_info (the output
names and display names ComfyUI's clients see), never from the converter under test.
"""

import base64
import io
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import comfyui_workflow_templates
import pytest
from PIL import Image, PngImagePlugin

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips these tests with the reason (under CI it fails them)
    expect = None

from editor_page import Editor
from engine_fixtures import CHECKPOINT_NAME

TEMPLATES = Path(comfyui_workflow_templates.__file__).resolve().parent / "templates"
RUN_TIMEOUT_MS = 120_000
NOTES = {"Note", "MarkdownNote"}  # ComfyUI's frontend leaves these out of the prompt; so does the editor
# ComfyUI's class names that are also ours with other inputs: the editor shows ComfyUI's under "ComfyUI.<name>"
SECOND_NAMESPACE = {"VAEDecode", "VAEEncode", "SaveImage", "LoadImage", "ImageScale"}


def template(name: str) -> dict:
    return json.loads((TEMPLATES / name).read_text())


def editor_type(class_type: str) -> str:
    return f"ComfyUI.{class_type}" if class_type in SECOND_NAMESPACE else class_type


def graph_nodes(ui: dict) -> list[dict]:
    return [node for node in ui["nodes"] if node["type"] not in NOTES]


def file_links(ui: dict, comfy_info: dict) -> set[tuple[str, str, str, str]]:
    """(from node, output name, to node, input name) of every link in a UI file, by its slots."""
    nodes = {node["id"]: node for node in ui["nodes"]}
    links = set()
    for _id, origin, origin_slot, target, target_slot, _type in ui["links"]:
        output = comfy_info[nodes[origin]["type"]]["output_name"][origin_slot]
        links.add((str(origin), output, str(target), nodes[target]["inputs"][target_slot]["name"]))
    return links


def default_api_prompt(ui: dict) -> dict:
    """default.json in ComfyUI's API format, as ComfyUI's frontend queues it (values read from the file)."""
    values = {node["id"]: node.get("widgets_values") for node in ui["nodes"]}
    seed, _control, steps, cfg, sampler, scheduler, denoise = values[3]
    return {
        "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"},
              "inputs": {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
                         "denoise": denoise, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                         "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": values[4][0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": dict(zip(("width", "height", "batch_size"), values[5]))},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": values[6][0], "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": values[7][0], "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def comfyui_png(chunks: dict[str, dict]) -> bytes:
    """A PNG as ComfyUI's SaveImage writes it: each of `chunks` as JSON in a tEXt chunk of that name."""
    info = PngImagePlugin.PngInfo()
    for keyword, data in chunks.items():
        info.add_text(keyword, json.dumps(data))
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 90, 200)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def drop_file(page, data: bytes, name: str, mime: str) -> None:
    """Drops a file onto the canvas, as dragging it from the desktop does."""
    page.evaluate("""([data, name, mime]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], name, { type: mime }));
        const canvas = document.getElementById("canvas");
        for (const type of ["dragenter", "dragover", "drop"]) {
            canvas.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: files }));
        }
    }""", [base64.b64encode(data).decode(), name, mime])


def node_position(editor: Editor, node_id: str) -> list[float]:
    return editor.node(node_id).evaluate("n => [parseFloat(n.style.left), parseFloat(n.style.top)]")


def image_loaded(locator, timeout=RUN_TIMEOUT_MS) -> int:
    locator.page.wait_for_function("img => img && img.complete && img.naturalWidth > 0",
                                   arg=locator.element_handle(timeout=timeout), timeout=timeout)
    return locator.evaluate("img => img.naturalWidth")


@pytest.fixture(scope="module")
def comfy_info(server) -> dict:
    """The server's /object_info in ComfyUI's namespace: what ComfyUI's clients see."""
    return server.get("/object_info")


def assert_opened_as_in_file(editor: Editor, ui: dict, comfy_info: dict) -> None:
    """Every node of the file (notes aside) at its position, under ComfyUI's display name, with the file's links."""
    nodes = graph_nodes(ui)
    expect(editor.node(str(nodes[0]["id"]))).to_be_visible()
    assert sorted(editor.node_ids()) == sorted(str(node["id"]) for node in nodes)
    for node in nodes:
        element = editor.node(str(node["id"]))
        assert node_position(editor, str(node["id"])) == [float(v) for v in node["pos"]], node["id"]
        assert element.get_attribute("data-type") == editor_type(node["type"])
        expect(element.locator(".node-title")).to_have_text(node.get("title") or comfy_info[node["type"]]["display_name"])
    assert editor.links() == file_links(ui, comfy_info)


# --- ComfyUI's templates ----------------------------------------------------------------------------------------


def test_comfyuis_default_template_opens_with_its_nodes_positions_links_and_values(page, comfy_info):
    ui = template("default.json")
    editor = Editor(page)
    editor.open_file(TEMPLATES / "default.json")
    assert_opened_as_in_file(editor, ui, comfy_info)
    expect(page.locator(".toast").last).to_contain_text("Opened default.json")

    values = {node["id"]: node.get("widgets_values") for node in ui["nodes"]}
    seed, control, steps, cfg, sampler, scheduler, denoise = values[3]
    assert int(editor.widget("3", "seed").input_value()) == seed
    assert float(editor.widget("3", "cfg").input_value()) == cfg and int(editor.widget("3", "steps").input_value()) == steps
    assert editor.widget("3", "sampler_name").input_value() == sampler
    assert editor.widget("3", "scheduler").input_value() == scheduler
    # The legacy control value `true` after the seed means "randomize", as ComfyUI's frontend reads it.
    assert control is True and editor.node("3").locator(".widget[data-input=seed] input.randomize").is_checked()
    assert editor.widget("6", "text").input_value() == values[6][0]
    assert [editor.widget("5", name).input_value() for name in ("width", "height", "batch_size")] == ["512", "512", "1"]
    # A checkpoint this server lacks is kept and shown as missing, as for our own files.
    expect(editor.widget("4", "ckpt_name").locator("option.missing")).to_have_text(f"{values[4][0]} (missing)")

    saved = editor.saved_workflow()  # what the editor saves is our format, with the layout kept
    assert saved["version"] == 1 and saved["nodes"]["8"]["type"] == "ComfyUI.VAEDecode"
    assert saved["nodes"]["3"]["inputs"]["model"] == ["4", comfy_info["CheckpointLoaderSimple"]["output_name"][0]]
    assert {node_id: entry["pos"] for node_id, entry in saved["ui"]["nodes"].items()} == {
        str(node["id"]): node["pos"] for node in ui["nodes"]}
    assert saved["ui"]["nodes"]["3"]["randomize"] == ["seed"]


def test_comfyuis_image2image_template_opens_without_its_notes(page, comfy_info):
    ui = template("image2image.json")
    editor = Editor(page)
    editor.open_file(TEMPLATES / "image2image.json")
    assert_opened_as_in_file(editor, ui, comfy_info)
    values = {node["id"]: node.get("widgets_values") for node in ui["nodes"]}
    assert editor.widget("10", "image").input_value() == values[10][0]  # the upload value after it is no input
    assert float(editor.widget("3", "denoise").input_value()) == pytest.approx(values[3][6])
    assert editor.widget("18", "upscale_method").input_value() == values[18][0]
    assert float(editor.widget("18", "megapixels").input_value()) == values[18][1]
    assert editor.node("3").locator(".widget[data-input=seed] input.randomize").is_checked()  # "randomize"
    # ComfyUI's LoadImage has an upload button, as ours does.
    assert editor.node("10").locator('.widget[data-input="image"] button.upload').is_visible()


def test_comfyuis_default_template_queued_from_the_editor_makes_an_image(page, comfy_info, editor_env, tmp_path,
                                                                        screenshots):
    ui = template("default.json")
    editor = Editor(page)
    editor.open_file(TEMPLATES / "default.json")
    expect(editor.node("9")).to_be_visible()
    editor.set_value("4", "ckpt_name", CHECKPOINT_NAME)  # the template asks for SD1.5: the tiny test checkpoint runs
    editor.set_value("5", "width", 64)
    editor.set_value("5", "height", 64)
    editor.set_value("3", "steps", 2)
    seed = int(editor.widget("3", "seed").input_value())
    editor.run()

    image = editor.node("9").locator("img.output-image")
    assert image_loaded(image) == 64
    expect(page.locator("#progress .progress-text")).to_have_text("Done")
    for node in graph_nodes(ui):
        expect(editor.node(str(node["id"]))).to_have_attribute("data-state", "done")
    assert editor.node("3").locator("img.latent-preview").get_attribute("src").startswith("blob:")
    assert int(editor.widget("3", "seed").input_value()) != seed  # randomize, as the file asked

    # ComfyUI's SaveImage wrote ComfyUI's PNG: the API prompt, and the workflow the editor queued (with its layout).
    query = parse_qs(urlsplit(image.get_attribute("src")).query, keep_blank_values=True)
    written = editor_env.output_dir / query["subfolder"][0] / query["filename"][0]
    with Image.open(written) as picture:
        chunks = {key: json.loads(value) for key, value in picture.text.items()}
    assert chunks["prompt"]["3"]["class_type"] == "KSampler" and chunks["prompt"]["3"]["inputs"]["seed"] == seed
    assert chunks["prompt"]["4"]["inputs"]["ckpt_name"] == CHECKPOINT_NAME
    assert chunks["workflow"]["ui"]["nodes"]["3"]["pos"] == next(n["pos"] for n in ui["nodes"] if n["id"] == 3)

    # For the README's picture: the built-in demo checkpoint, which draws shapes, on the same template.
    editor.set_value("4", "ckpt_name", "demo-shapes.safetensors")
    editor.set_value("6", "text", "a red circle on a white background")
    editor.set_value("7", "text", "")
    editor.set_value("3", "steps", 20)
    first = image.get_attribute("src")
    editor.run()
    expect(image).not_to_have_attribute("src", first, timeout=RUN_TIMEOUT_MS)
    image_loaded(image)
    expect(page.locator("#progress .progress-text")).to_have_text("Done", timeout=RUN_TIMEOUT_MS)
    page.locator("#fit-button").click()
    page.mouse.click(*editor.to_screen(8, 740))  # nothing selected in the picture
    page.screenshot(path=screenshots / "editor-comfyui-default.png")

    # The first PNG opens again where it came from: the same nodes at the same places, with its values.
    page.locator("#new-button").click()
    editor.open_file(written)
    expect(editor.node("9")).to_be_visible()
    assert node_position(editor, "3") == [float(v) for v in next(n["pos"] for n in ui["nodes"] if n["id"] == 3)]
    assert editor.widget("4", "ckpt_name").input_value() == CHECKPOINT_NAME


# --- ComfyUI's PNGs and API prompts -------------------------------------------------------------------------------


def test_a_comfyui_png_opens_its_workflow_with_the_layout(page, comfy_info):
    ui = template("default.json")
    editor = Editor(page)
    drop_file(page, comfyui_png({"prompt": default_api_prompt(ui), "workflow": ui}), "ComfyUI_00001_.png", "image/png")
    assert_opened_as_in_file(editor, ui, comfy_info)
    assert editor.widget("7", "text").input_value() == "text, watermark"


def test_a_comfyui_png_with_only_its_api_prompt_opens_laid_out_by_its_links(page, comfy_info):
    ui = template("default.json")
    prompt = default_api_prompt(ui)
    editor = Editor(page)
    drop_file(page, comfyui_png({"prompt": prompt}), "api_only.png", "image/png")
    expect(editor.node("9")).to_be_visible()
    assert sorted(editor.node_ids()) == sorted(prompt)
    assert editor.links() == file_links(ui, comfy_info)
    assert int(editor.widget("3", "seed").input_value()) == prompt["3"]["inputs"]["seed"]
    # No positions in an API prompt: each node is placed right of the nodes it reads from.
    assert node_position(editor, "4")[0] < node_position(editor, "6")[0] < node_position(editor, "3")[0] \
        < node_position(editor, "8")[0] < node_position(editor, "9")[0]


def test_an_api_prompt_file_opens_and_its_titles_show(page, tmp_path, comfy_info):
    prompt = default_api_prompt(template("default.json"))
    prompt["9"]["_meta"] = {"title": "Save Image"}
    prompt["6"]["_meta"] = {"title": "Positive"}
    path = tmp_path / "api_prompt.json"
    path.write_text(json.dumps(prompt))
    editor = Editor(page)
    editor.open_file(path)
    expect(editor.node("6")).to_be_visible()
    assert sorted(editor.node_ids()) == sorted(prompt)
    expect(editor.node("6").locator(".node-title")).to_have_text("Positive")
    assert editor.node("8").get_attribute("data-type") == "ComfyUI.VAEDecode"
    assert editor.widget("9", "filename_prefix").input_value() == "ComfyUI"


def test_a_comfyui_workflow_with_a_node_type_we_lack_says_which_node(page, tmp_path):
    ui = template("default.json")
    ui["nodes"].append({"id": 42, "type": "FancyUpscaler", "pos": [1700, 200], "size": [300, 100], "mode": 0,
                        "inputs": [], "outputs": [], "widgets_values": [2]})
    path = tmp_path / "with_unknown.json"
    path.write_text(json.dumps(ui))
    editor = Editor(page)
    editor.open_file(path)
    expect(page.locator(".toast-error").last).to_contain_text("42")
    expect(page.locator(".toast-error").last).to_contain_text("FancyUpscaler")
