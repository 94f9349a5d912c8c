"""The web editor in headless Chromium, against a real `nodegraph serve` with the tiny random checkpoint.

Every test also asserts (in the `page` fixture) that the browser console showed no error.
"""

import base64
import io
import json
import os
import re

from PIL import Image, PngImagePlugin
try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips these tests with the reason (under CI it fails them)
    expect = None

from editor_page import Editor
from engine_fixtures import CHECKPOINT_NAME, install_checkpoint, node, txt2img, workflow

RUN_TIMEOUT_MS = 90_000  # a 64x64 run on the tiny checkpoint takes seconds; the margin is for a busy machine


def with_positions(flow: dict, positions: dict[str, list[int]]) -> dict:
    return {**flow, "ui": {"nodes": {node_id: {"pos": pos} for node_id, pos in positions.items()}}}


def write_json(path, data) -> object:
    path.write_text(json.dumps(data))
    return path


def png_with_workflow(flow: dict) -> bytes:
    """A PNG carrying a workflow the way SaveImage writes it: JSON in a "workflow" tEXt chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", json.dumps(flow, ensure_ascii=True))
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def image_loaded(locator, timeout=RUN_TIMEOUT_MS) -> int:
    """Waits until the <img> has loaded and returns its natural width."""
    locator.page.wait_for_function("img => img && img.complete && img.naturalWidth > 0", arg=locator.element_handle(timeout=timeout),
                                   timeout=timeout)
    return locator.evaluate("img => img.naturalWidth")


# --- opening the page -----------------------------------------------------------------------------------------------


def test_page_opens_with_the_palette_by_category_and_an_empty_canvas(page, screenshots):
    rows = page.eval_on_selector_all(".palette-group", """gs => gs.map(g => [g.dataset.category,
        [...g.querySelectorAll('.palette-item')].map(i => [i.dataset.type, i.innerText.trim()])])""")
    groups = {category: dict(items) for category, items in rows}  # category -> {type: the name shown}
    # Every node under ComfyUI's display name, sorted by it; ComfyUI's nodes and ours side by side.
    assert groups["loaders"]["CheckpointLoaderSimple"] == "Load Checkpoint" and "LoadCheckpoint" in groups["loaders"]
    assert groups["sampling"]["KSamplerAdvanced"] == "KSampler (Advanced)"
    assert {"DDPMSample", "KSampler"} <= set(groups["sampling"])
    assert groups["latent"]["ComfyUI.VAEDecode"] == "VAE Decode" and "VAEDecode" in groups["latent"]
    assert {"BasicScheduler", "ExponentialScheduler", "KarrasScheduler", "SDTurboScheduler"} <= set(
        groups["sampling/custom_sampling/schedulers"])
    assert {"SaveImage", "LoadImage", "PreviewImage", "ComfyUI.SaveImage"} <= set(groups["image"])
    unsorted = page.eval_on_selector_all(".palette-group", """gs => gs.filter(g => {
        const names = [...g.querySelectorAll('.palette-item')].map(i => i.innerText.trim());
        return names.some((name, i) => i > 0 && names[i - 1].localeCompare(name) > 0);
    }).map(g => g.dataset.category)""")
    assert unsorted == []
    categories = [category for category, _items in rows]
    assert categories.index("conditioning") < categories.index("latent") < categories.index("sampling")
    assert categories[-1].startswith("_")  # ComfyUI's "_for_testing" last, as in its menus
    assert page.locator(".node").count() == 0
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")

    # Everything in the top bar fits a laptop window, side by side.
    boxes = [page.locator(selector).bounding_box() for selector in
             ("#new-button", "#open-button", "#save-button", "#examples", "#undo-button", "#fit-button", "#progress",
              "#interrupt-button", "#run-button", "#connection")]
    assert all(box["x"] >= 0 and box["x"] + box["width"] <= 1280 for box in boxes)
    assert all(a["x"] + a["width"] <= b["x"] for a, b in zip(boxes, boxes[1:]))
    page.screenshot(path=screenshots / "editor-empty.png")

    page.fill("#palette-search", "prompt")
    visible = page.eval_on_selector_all(".palette-item:not([hidden])", "items => items.map(i => i.dataset.type)")
    assert {"CLIPEncode", "CLIPTextEncode"} <= set(visible) and "VAEDecode" not in visible
    assert page.locator('.palette-group[data-category="latent"]').is_hidden()


# --- building and running -------------------------------------------------------------------------------------------


def test_txt2img_built_from_the_palette_runs_and_shows_its_image(page, server, screenshots):
    editor = Editor(page)
    ckpt = editor.add_by_drag("LoadCheckpoint", 20, 90)
    pos = editor.add_by_drag("CLIPEncode", 300, 20)
    neg = editor.add_by_click("CLIPEncode")
    editor.move_node(neg, 300, 230)
    empty = editor.add_by_click("EmptyLatent")
    editor.move_node(empty, 20, 300)
    sample = editor.add_by_drag("DDPMSample", 580, 20)
    wanted = [(ckpt, "clip", pos, "clip"), (ckpt, "clip", neg, "clip"), (ckpt, "model", sample, "model"),
              (pos, "conditioning", sample, "positive"), (neg, "conditioning", sample, "negative"),
              (empty, "latent", sample, "latent")]
    for link in wanted:
        editor.connect(*link)
    editor.drag(editor.to_screen(860, 700), editor.to_screen(560, 700))  # pan: room on the right
    decode = editor.add_by_drag("VAEDecode", 580, 20)
    save = editor.add_by_drag("SaveImage", 580, 170)
    editor.connect(sample, "latent", decode, "latent")
    editor.connect(decode, "image", save, "images")
    page.locator("#fit-button").click()  # zooms out: the checkpoint's vae output is in view again
    editor.connect(ckpt, "vae", decode, "vae")
    wanted += [(sample, "latent", decode, "latent"), (decode, "image", save, "images"), (ckpt, "vae", decode, "vae")]
    assert editor.links() == set(wanted)
    editor.set_value(pos, "text", "a red circle on a white background")
    editor.set_value(neg, "text", "")
    editor.set_value(empty, "width", 64)
    editor.set_value(empty, "height", 64)
    editor.set_value(sample, "steps", 20)
    editor.set_value(save, "prefix", "editor/txt2img")
    editor.set_value(ckpt, "name", "demo-shapes.safetensors")  # the built-in one: a real picture for the screenshot
    seed = int(editor.widget(sample, "seed").input_value())

    saved = editor.saved_workflow()
    assert saved["version"] == 1 and saved["nodes"][sample]["inputs"] == {
        "model": [ckpt, "model"], "positive": [pos, "conditioning"], "negative": [neg, "conditioning"],
        "latent": [empty, "latent"], "seed": seed, "steps": 20, "cfg": 7.5, "denoise": 1}
    assert saved["nodes"][save] == {"type": "SaveImage", "inputs": {"images": [decode, "image"], "prefix": "editor/txt2img"}}
    assert saved["nodes"][pos]["inputs"]["text"] == "a red circle on a white background"
    assert saved["ui"]["nodes"][ckpt]["pos"] == [20, 90] and saved["ui"]["nodes"][decode]["pos"] == [880, 20]

    editor.run()
    image = editor.node(save).locator("img.output-image")
    assert image_loaded(image) == 64
    expect(page.locator("#progress .progress-text")).to_have_text("Done")
    for node_id in (ckpt, pos, neg, empty, sample, decode, save):
        expect(editor.node(node_id)).to_have_attribute("data-state", "done")
    preview = editor.node(sample).locator("img.latent-preview")
    assert preview.is_visible() and preview.get_attribute("src").startswith("blob:")
    assert page.locator(f'#gallery-list img[src="{image.get_attribute("src")}"]').count() == 1
    new_seed = int(editor.widget(sample, "seed").input_value())
    assert new_seed != seed and 0 <= new_seed < 2**53  # "randomize after run" is on for a new sampler

    history = server.get("/history?max_items=1")
    (entry,) = history.values()
    assert entry["workflow"]["nodes"] == saved["nodes"] and entry["status"]["status_str"] == "success"
    page.locator("#fit-button").click()
    page.mouse.click(*editor.to_screen(8, 740))  # a click on the background: nothing selected in the picture
    page.screenshot(path=screenshots / "editor-txt2img.png")

    editor.run()  # with the new seed: the checkpoint, prompts and latent come from the cache
    expect(page.locator("#gallery-list img")).to_have_count(2, timeout=RUN_TIMEOUT_MS)
    for node_id in (ckpt, pos, neg, empty):
        expect(editor.node(node_id)).to_have_attribute("data-state", "cached")
    expect(editor.node(save)).to_have_attribute("data-state", "done")

    # The gallery is filled from /history after a reload, newest first, as it was before.
    shown = page.eval_on_selector_all("#gallery-list img", "imgs => imgs.map(i => i.getAttribute('src'))")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#gallery-list img")).to_have_count(len(shown))
    assert page.eval_on_selector_all("#gallery-list img", "imgs => imgs.map(i => i.getAttribute('src'))") == shown


def test_stop_interrupts_the_running_prompt_and_shows_where_it_stopped(page, tmp_path):
    editor = Editor(page)
    flow = txt2img(steps=200, prefix="interrupted")  # long enough to be stopped halfway
    editor.open_file(write_json(tmp_path / "long.json", flow))
    expect(editor.node("sample")).to_be_visible()
    editor.run()
    expect(editor.node("sample")).to_have_attribute("data-state", "running", timeout=RUN_TIMEOUT_MS)
    expect(editor.node("sample").locator(".node-progress")).to_have_class(re.compile("visible"), timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#progress .progress-text")).to_contain_text(re.compile(r"step \d+/200"))
    page.locator("#interrupt-button").click()
    expect(page.locator("#progress .progress-text")).to_have_text("Stopped", timeout=RUN_TIMEOUT_MS)
    expect(editor.node("sample")).to_have_attribute("data-state", "interrupted")
    assert editor.node("save").locator("img.output-image").count() == 0
    expect(editor.node("decode")).not_to_have_attribute("data-state", "done")


def test_a_prompt_served_whole_from_the_cache_still_shows_its_image(page, server, tmp_path):
    editor = Editor(page)
    editor.open_file(write_json(tmp_path / "fixed.json", txt2img(prefix="cached")))  # a fixed seed: no randomize
    expect(editor.node("save")).to_be_visible()
    finished = len(server.get("/history"))
    for runs in (1, 2):  # the second time nothing runs: ComfyUI's "executed" of a cached output brings its images
        editor.run()
        server.wait_for(lambda: len(server.get("/history")) >= finished + runs)
        expect(page.locator("#progress .progress-text")).to_have_text("Done", timeout=RUN_TIMEOUT_MS)
    expect(editor.node("save")).to_have_attribute("data-state", "cached")
    assert image_loaded(editor.node("save").locator("img.output-image")) == 64


def test_a_wrong_type_connection_is_refused(page):
    editor = Editor(page)
    ckpt = editor.add_by_drag("LoadCheckpoint", 20, 40)
    sample = editor.add_by_drag("DDPMSample", 420, 40)
    mouse = page.mouse
    mouse.move(*editor.center(editor.socket(ckpt, "out", "clip")))
    mouse.down()
    mouse.move(*editor.to_screen(300, 300), steps=4)
    expect(editor.socket(sample, "in", "model")).to_have_class(re.compile("incompatible"))
    mouse.move(*editor.center(editor.socket(sample, "in", "model")), steps=4)
    mouse.up()
    assert editor.links() == set()
    expect(page.locator(".toast-error")).to_contain_text("A CLIP output cannot connect to a MODEL input")

    editor.connect(ckpt, "model", sample, "model")
    assert editor.links() == {(ckpt, "model", sample, "model")}


def test_custom_sampling_nodes_link_by_their_sampler_and_sigmas_sockets(page):
    editor = Editor(page)
    select = editor.add_by_drag("KSamplerSelect", 20, 40)
    scheduler = editor.add_by_drag("KarrasScheduler", 20, 260)
    custom = editor.add_by_drag("SamplerCustom", 420, 40)
    expect(editor.widget(select, "sampler_name")).to_have_value("euler")
    assert "dpmpp_2m" in editor.widget(select, "sampler_name").evaluate("s => [...s.options].map(o => o.value)")
    editor.connect(select, "SAMPLER", custom, "sampler")
    editor.connect(scheduler, "SIGMAS", custom, "sigmas")
    assert editor.links() == {(select, "SAMPLER", custom, "sampler"), (scheduler, "SIGMAS", custom, "sigmas")}
    mouse = page.mouse  # a SIGMAS output does not fit the latent input
    mouse.move(*editor.center(editor.socket(scheduler, "out", "SIGMAS")))
    mouse.down()
    mouse.move(*editor.center(editor.socket(custom, "in", "latent_image")), steps=4)
    mouse.up()
    expect(page.locator(".toast-error")).to_contain_text("A SIGMAS output cannot connect to a LATENT input")
    assert editor.saved_workflow()["ui"]["nodes"][custom]["randomize"] == ["noise_seed"]


def test_an_invalid_value_shows_its_error_on_the_node_and_nothing_is_queued(page, server, tmp_path):
    editor = Editor(page)
    editor.open_file(write_json(tmp_path / "flow.json", txt2img()))
    expect(editor.node("empty")).to_be_visible()
    finished_before = len(server.get("/history"))
    editor.set_value("empty", "width", 65)
    editor.run()
    error = editor.node("empty").locator('.widget[data-input="width"] .input-error')
    expect(error).to_have_text(re.compile(r"multiple of 8, got 65$"))  # the input names itself: not repeated
    expect(editor.node("empty")).to_have_class(re.compile("has-error"))
    expect(page.locator(".toast-error")).to_contain_text("Not queued: 1 problem")
    assert server.get("/queue") == {"queue_running": [], "queue_pending": []}
    assert len(server.get("/history")) == finished_before

    editor.set_value("empty", "width", 64)  # the edited input no longer shows the error
    expect(error).to_be_empty()
    expect(editor.node("empty")).not_to_have_class(re.compile("has-error"))


def test_a_workflow_without_an_output_node_says_so(page):
    editor = Editor(page)
    editor.add_by_click("EmptyLatentImage")
    editor.run()
    expect(page.locator(".toast-error")).to_contain_text("Not queued: Prompt has no outputs")


def test_a_runtime_error_appears_on_the_node_that_failed(page, editor_env, tmp_path):
    (editor_env.input_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    editor = Editor(page)
    flow = workflow(image=node("LoadImage", name="broken.png"), show=node("PreviewImage", images=["image", "image"]))
    editor.open_file(write_json(tmp_path / "broken.json", flow))
    editor.run()
    expect(editor.node("image")).to_have_attribute("data-state", "error", timeout=RUN_TIMEOUT_MS)
    expect(editor.node("image").locator(".node-message")).to_contain_text("broken.png")
    expect(editor.node("image")).to_have_class(re.compile("has-error"))
    expect(page.locator("#progress .progress-text")).to_have_text("Failed")


# --- files ----------------------------------------------------------------------------------------------------------


def test_a_workflow_file_opens_with_its_nodes_links_values_and_positions(page, tmp_path):
    editor = Editor(page)
    flow = with_positions(txt2img(prompt="a blue square"), {
        "ckpt": [0, 100], "pos": [300, 0], "neg": [300, 220], "empty": [300, 440], "sample": [600, 60],
        "decode": [900, 60], "save": [900, 200]})
    editor.open_file(write_json(tmp_path / "mine.json", flow))
    expect(editor.node("save")).to_be_visible()
    assert sorted(editor.node_ids()) == sorted(flow["nodes"])
    assert len(editor.links()) == 9 and ("decode", "image", "save", "images") in editor.links()
    assert editor.widget("pos", "text").input_value() == "a blue square"
    assert editor.node("sample").evaluate("n => [parseFloat(n.style.left), parseFloat(n.style.top)]") == [600, 60]
    expect(page.locator(".toast")).to_contain_text("Opened mine.json")

    saved = editor.saved_workflow()  # the same file comes back out
    assert saved["nodes"] == flow["nodes"]
    assert {k: v["pos"] for k, v in saved["ui"]["nodes"].items()} == {k: v["pos"] for k, v in flow["ui"]["nodes"].items()}


def test_example_workflows_open_from_the_menu(page):
    editor = Editor(page)
    options = page.eval_on_selector_all("#examples option", "os => os.map(o => o.value)")
    assert "txt2img.json" in options and "img2img.json" in options
    page.select_option("#examples", "img2img.json")
    expect(editor.node("encode")).to_be_visible()
    assert ("image", "image", "encode", "image") in editor.links()
    assert editor.widget("ckpt", "name").input_value() == "demo-shapes.safetensors"


def test_a_file_name_the_server_lacks_is_shown_as_missing(page, tmp_path):
    editor = Editor(page)
    editor.open_file(write_json(tmp_path / "elsewhere.json", txt2img(checkpoint="from-elsewhere.safetensors")))
    name = editor.widget("ckpt", "name")
    assert name.input_value() == "from-elsewhere.safetensors"
    expect(name.locator("option.missing")).to_have_text("from-elsewhere.safetensors (missing)")
    assert CHECKPOINT_NAME in name.locator("option").all_inner_texts()


def test_dropping_a_png_the_engine_wrote_opens_its_workflow(page):
    editor = Editor(page)
    flow = txt2img(prompt="from a png")
    page.evaluate("""([data, name]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], name, { type: "image/png" }));
        const canvas = document.getElementById("canvas");
        for (const type of ["dragenter", "dragover", "drop"]) {
            canvas.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: files }));
        }
    }""", [base64.b64encode(png_with_workflow(flow)).decode(), "txt2img_00001_.png"])
    expect(editor.node("sample")).to_be_visible()
    assert sorted(editor.node_ids()) == sorted(flow["nodes"])
    assert editor.widget("pos", "text").input_value() == "from a png"
    assert len(editor.links()) == 9


def test_an_uploaded_image_becomes_the_load_image_choice(page, editor_env, tmp_path):
    editor = Editor(page)
    loader = editor.add_by_click("LoadImage")
    picture = tmp_path / "uploaded-photo.png"
    Image.new("RGB", (24, 16), (30, 120, 200)).save(picture)
    editor.node(loader).locator('.widget[data-input="name"] input[type=file]').set_input_files(str(picture))
    expect(editor.widget(loader, "name")).to_have_value("uploaded-photo.png")
    assert image_loaded(editor.node(loader).locator("img.input-thumb")) == 24
    assert (editor_env.input_dir / "uploaded-photo.png").read_bytes() == picture.read_bytes()


# --- editing --------------------------------------------------------------------------------------------------------


def click_link(page, to: str, input_name: str) -> None:
    x, y = page.evaluate("""([to, input]) => {
        const hit = document.querySelector(`#links path.link-hit[data-to="${to}"][data-input="${input}"]`);
        const point = hit.getPointAtLength(hit.getTotalLength() / 2).matrixTransform(hit.getScreenCTM());
        return [point.x, point.y];
    }""", [to, input_name])
    page.mouse.click(x, y)


def test_links_and_nodes_are_removed_and_undo_brings_them_back(page):
    editor = Editor(page)
    ckpt = editor.add_by_drag("LoadCheckpoint", 20, 40)
    decode = editor.add_by_drag("VAEDecode", 420, 200)
    editor.connect(ckpt, "vae", decode, "vae")
    link = (ckpt, "vae", decode, "vae")
    assert editor.links() == {link}

    click_link(page, decode, "vae")
    page.keyboard.press("Delete")
    assert editor.links() == set()
    page.keyboard.press("Control+z")
    assert editor.links() == {link}

    editor.drag(editor.center(editor.socket(decode, "in", "vae")), editor.to_screen(300, 500))  # drag it off the input
    assert editor.links() == set()
    page.locator("#undo-button").click()
    assert editor.links() == {link}

    editor.node(decode).locator(".node-title").click()
    page.keyboard.press("Delete")
    assert editor.node_ids() == [ckpt] and editor.links() == set()
    editor.node(ckpt).locator(".node-delete").click()
    assert editor.node_ids() == []
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+z")
    assert sorted(editor.node_ids()) == sorted([ckpt, decode]) and editor.links() == {link}


def test_the_graph_survives_a_page_reload(page):
    editor = Editor(page)
    ckpt = editor.add_by_drag("LoadCheckpoint", 40, 40)
    decode = editor.add_by_drag("VAEDecode", 400, 60)
    editor.connect(ckpt, "vae", decode, "vae")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert sorted(editor.node_ids()) == sorted([ckpt, decode])
    assert editor.links() == {(ckpt, "vae", decode, "vae")}


def test_the_canvas_pans_and_zooms(page):
    editor = Editor(page)
    ckpt = editor.add_by_drag("LoadCheckpoint", 100, 100)
    before = editor.node(ckpt).bounding_box()
    editor.drag(editor.to_screen(500, 500), editor.to_screen(560, 540))
    moved = editor.node(ckpt).bounding_box()
    assert (round(moved["x"] - before["x"]), round(moved["y"] - before["y"])) == (60, 40)

    page.mouse.move(*editor.to_screen(300, 300))
    page.mouse.wheel(0, -400)
    page.wait_for_function("w => document.querySelector('.node').getBoundingClientRect().width > w * 1.3",
                           arg=moved["width"])
    page.locator("#fit-button").click()
    fitted = editor.node(ckpt).bounding_box()
    canvas = editor.canvas_box()
    assert canvas["x"] <= fitted["x"] and fitted["x"] + fitted["width"] <= canvas["x"] + canvas["width"]


def test_the_page_reconnects_after_a_server_restart(page, server, editor_env, tiny_checkpoint, tmp_path):
    # While the server is down the browser reports the failed websocket attempts: expected here, nowhere else.
    page.console_errors.expected = [r"WebSocket connection to '.*' failed"]
    editor = Editor(page)
    connection = page.locator("#connection")
    expect(connection).to_have_attribute("data-state", "open")
    server.stop()
    expect(connection).to_have_attribute("data-state", "closed")
    install_checkpoint(tiny_checkpoint, editor_env, "zz-after-restart.safetensors")
    server.start()
    expect(connection).to_have_attribute("data-state", "open", timeout=20_000)

    # object_info is fetched again: the checkpoint added while the server was down is offered.
    ckpt = editor.add_by_click("LoadCheckpoint")
    expect(editor.widget(ckpt, "name").locator('option[value="zz-after-restart.safetensors"]')).to_have_count(1)
    os.unlink(editor_env.checkpoints_dir / "zz-after-restart.safetensors")

    editor.open_file(write_json(tmp_path / "again.json", txt2img(steps=1, prefix="after-restart")))
    editor.run()
    assert image_loaded(editor.node("save").locator("img.output-image")) == 64
