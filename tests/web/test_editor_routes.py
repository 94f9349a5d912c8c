"""The server routes the editor relies on (no browser): its files, the example workflows, and /validate."""

import json
import re
import time
import tomllib
from pathlib import Path

import comfyui_workflow_templates
import pytest
from aiohttp import WSMsgType

from app_client import run, serving
from engine_fixtures import env, sd_env, txt2img  # noqa: F401 (fixtures)
from nodegraph.server import editor as server_module

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
REPO = Path(__file__).resolve().parents[2]
TEMPLATES = Path(comfyui_workflow_templates.__file__).resolve().parent / "templates"


# --- the editor's files ---------------------------------------------------------------------------------------------


def test_editor_page_is_served_at_the_root_and_may_load_only_from_its_own_origin(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            response = await client.get("/")
            assert response.status == 200 and response.content_type == "text/html"
            assert '<script type="module" src="/web/main.js">' in await response.text()
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
            module = await client.get("/web/main.js")
            assert module.status == 200 and "javascript" in module.content_type
            assert module.headers["Cache-Control"] == "no-cache"
    run(scenario())


def test_only_files_inside_the_web_folder_are_served(env, tmp_path, monkeypatch):
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html>")
    (web / "app.js").write_text("export {};")
    (tmp_path / "secret.txt").write_text("secret")
    (web / "leak.txt").symlink_to(tmp_path / "secret.txt")  # a symlink leading out of the folder
    monkeypatch.setattr(server_module, "WEB_DIR", web)

    async def scenario():
        async with serving(env, tmp_path) as client:
            assert (await client.get("/web/app.js")).status == 200
            for path in ("/web/leak.txt", "/web/../secret.txt", "/web/%2e%2e/secret.txt", "/web/..%2fsecret.txt",
                         "/web/", "/web/%2fetc%2fpasswd"):
                response = await client.get(path)
                assert response.status in (403, 404), path
                assert "secret" not in await response.text(), path
    run(scenario())


def test_the_editor_files_are_package_data():
    """A non-editable install ships every file of nodegraph/web (the globs in pyproject.toml cover them all)."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["nodegraph"]
    files = [path for path in (REPO / "nodegraph" / "web").iterdir() if path.is_file()]
    assert {"index.html", "main.js", "style.css"} <= {path.name for path in files}
    uncovered = [path.name for path in files if not any(path.match(pattern.split("/", 1)[1]) for pattern in globs)]
    assert uncovered == []
    assert server_module.WEB_DIR == REPO / "nodegraph" / "web"


def test_the_editor_fetches_nothing_from_other_origins():
    """No URL of another site in the page, its modules or its styles (the CSP would block one anyway)."""
    svg_namespace = "http://www.w3.org/2000/svg"  # a name, never fetched
    for path in (REPO / "nodegraph" / "web").iterdir():
        text = path.read_text().replace(svg_namespace, "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(\s*['\"]?(https?:|//)", text, re.I), path.name


def test_every_module_the_page_imports_is_there():
    web = REPO / "nodegraph" / "web"
    for module in web.glob("*.js"):
        for name in re.findall(r'from\s+"\./([\w.]+)"', module.read_text()):
            assert (web / name).is_file(), f"{module.name} imports a missing {name}"


# --- example workflows ----------------------------------------------------------------------------------------------


def test_example_workflows_are_listed_and_served_read_only(env, tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "txt2img.json").write_text(json.dumps(txt2img()))
    (examples / "notes.txt").write_text("not a workflow")
    (tmp_path / "outside.json").write_text("{}")
    (examples / "link.json").symlink_to(tmp_path / "outside.json")

    async def scenario():
        async with serving(env, tmp_path, workflows_dir=examples) as client:
            assert await (await client.get("/workflows")).json() == {"workflows": ["txt2img.json"]}
            assert await (await client.get("/workflows/txt2img.json")).json() == txt2img()
            for name in ("link.json", "notes.txt", "..%2Foutside.json", "missing.json"):
                assert (await client.get(f"/workflows/{name}")).status == 404, name
            assert (await client.post("/workflows/txt2img.json", json={})).status == 405
    run(scenario())


def test_without_an_examples_folder_there_are_no_examples(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path, workflows_dir=tmp_path / "absent") as client:
            assert await (await client.get("/workflows")).json() == {"workflows": []}
            assert (await client.get("/workflows/txt2img.json")).status == 404
    run(scenario())


def test_the_repository_examples_are_offered_by_default(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            names = (await (await client.get("/workflows")).json())["workflows"]
            assert {"txt2img.json", "img2img.json"} <= set(names)
    run(scenario())


# --- checking a workflow before queueing ----------------------------------------------------------------------------


def test_validate_reports_every_problem_without_queueing(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            flow = txt2img(size=65)
            flow["nodes"]["sample"]["inputs"]["steps"] = 100_000
            response = await client.post("/validate", json={"prompt": flow})  # as the editor sends it
            assert response.status == 200
            body = await response.json()
            assert body["valid"] is False and body["error"]["type"] == "prompt_outputs_failed_validation"
            named = {(node_id, error["extra_info"].get("input_name")) for node_id, entry in body["node_errors"].items()
                     for error in entry["errors"]}
            assert {("empty", "width"), ("empty", "height"), ("sample", "steps")} <= named
            assert body["node_errors"]["empty"]["class_type"] == "EmptyLatent"
            assert await (await client.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
            good = await (await client.post("/validate", json={"prompt": txt2img()})).json()
            assert good == {"valid": True, "error": None, "node_errors": {}}
            assert await (await client.get("/history")).json() == {}
    run(scenario())


def test_validate_refuses_cross_origin_requests(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            response = await client.post("/validate", json={"workflow": {}}, headers={"Origin": "https://evil.example"})
            assert response.status == 403
    run(scenario())


# --- restarts -------------------------------------------------------------------------------------------------------


def test_shutting_down_closes_open_websockets_at_once(env, tmp_path):
    """A browser tab left open never holds up a server restart (aiohttp would wait on its websocket)."""
    async def scenario():
        async with serving(env, tmp_path) as client:
            ws = await client.ws_connect("/ws?client_id=tab")
            assert (await ws.receive_json())["type"] == "status"
            started = time.monotonic()
            await client.server.close()
            assert (await ws.receive(timeout=5)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            assert time.monotonic() - started < 5
    run(scenario())


# --- converting ComfyUI's files for the editor ----------------------------------------------------------------------


def test_convert_turns_comfyuis_ui_file_into_ours_keeping_positions_and_seed_control(env, tmp_path):
    ui = json.loads((TEMPLATES / "default.json").read_text())

    async def scenario():
        async with serving(env, tmp_path) as client:
            response = await client.post("/nodegraph/convert", json={"workflow": ui})
            assert response.status == 200
            body = await response.json()
            assert body["format"] == "ui"
            native = body["workflow"]
            assert native["version"] == 1
            assert {node_id: entry["type"] for node_id, entry in native["nodes"].items()} == {
                "3": "KSampler", "4": "CheckpointLoaderSimple", "5": "EmptyLatentImage", "6": "CLIPTextEncode",
                "7": "CLIPTextEncode", "8": "ComfyUI.VAEDecode", "9": "ComfyUI.SaveImage"}
            assert {node_id: entry["pos"] for node_id, entry in native["ui"]["nodes"].items()} == {
                str(node["id"]): node["pos"] for node in ui["nodes"]}
            assert native["ui"]["nodes"]["3"]["randomize"] == ["seed"]
            assert native["nodes"]["3"]["inputs"]["seed"] == ui["nodes"][3]["widgets_values"][0]
            # The editor's API prompt answer is the same graph: a native file converts to itself.
            again = await (await client.post("/nodegraph/convert", json={"workflow": native})).json()
            assert again == {"workflow": native, "format": "native"}
    run(scenario())


def test_convert_reads_a_version_1_ui_file_as_its_version_0_4_twin(env, tmp_path):
    """Litegraph's schema 1 keeps links as objects; the same graph converts to the same workflow."""
    old = json.loads((TEMPLATES / "default.json").read_text())
    new = {**old, "version": 1, "state": {"lastNodeId": 9, "lastLinkId": 9, "lastGroupId": 0, "lastRerouteId": 0},
           "links": [{"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
                      "target_slot": target_slot, "type": kind}
                     for link_id, origin, origin_slot, target, target_slot, kind in old["links"]]}

    async def scenario():
        async with serving(env, tmp_path) as client:
            from_old = await (await client.post("/nodegraph/convert", json={"workflow": old})).json()
            from_new = await (await client.post("/nodegraph/convert", json={"workflow": new})).json()
            assert from_new == from_old and from_new["format"] == "ui"
    run(scenario())


def test_convert_takes_an_api_prompt(env, tmp_path):
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "2": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["1", 0], "upscale_method": "nearest-exact",
                                                                "scale_by": 2.0}}}

    async def scenario():
        async with serving(env, tmp_path) as client:
            body = await (await client.post("/nodegraph/convert", json={"workflow": prompt})).json()
            assert body["format"] == "api"
            nodes = body["workflow"]["nodes"]
            assert nodes["2"]["type"] == "LatentUpscaleBy" and nodes["2"]["inputs"]["scale_by"] == 2.0
            assert nodes["2"]["inputs"]["samples"][0] == "1"  # a link by output name, to node "1"
    run(scenario())


def test_convert_opens_the_rest_of_a_ui_file_and_names_the_node_whose_type_is_missing(env, tmp_path):
    ui = json.loads((TEMPLATES / "default.json").read_text())
    ui["nodes"].append({"id": 42, "type": "FancyUpscaler", "pos": [1700, 200], "mode": 0, "inputs": [],
                        "outputs": [], "widgets_values": [2]})

    async def scenario():
        async with serving(env, tmp_path) as client:
            response = await client.post("/nodegraph/convert", json={"workflow": ui})
            assert response.status == 200
            body = await response.json()
            assert "42" not in body["workflow"]["nodes"] and len(body["workflow"]["nodes"]) == 7
            entry = body["node_errors"]["42"]
            assert entry["class_type"] == "FancyUpscaler" and entry["errors"][0]["type"] == "missing_node_type"
            assert "FancyUpscaler" in entry["errors"][0]["message"]
    run(scenario())


def test_convert_refuses_what_is_no_workflow_in_comfyuis_error_shape(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            for body in ({"workflow": "a string"}, {"workflow": [1, 2]}, {}):
                response = await client.post("/nodegraph/convert", json=body)
                assert response.status == 400, body
                error = (await response.json())["error"]
                assert {"type", "message"} <= set(error) and "workflow" in error["message"]
    run(scenario())


def test_convert_is_origin_checked_and_body_limited(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            response = await client.post("/nodegraph/convert", json={"workflow": {}},
                                         headers={"Origin": "https://evil.example"})
            assert response.status == 403
            huge = {"workflow": {"1": {"class_type": "Note", "inputs": {"text": "x" * (3 * 2**20)}}}}
            assert (await client.post("/nodegraph/convert", json=huge)).status == 413
    run(scenario())
