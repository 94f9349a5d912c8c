"""The server routes the editor relies on (no browser): its files, the example workflows, and /validate."""

import json
import re
import time
import tomllib
from pathlib import Path

import pytest
from aiohttp import WSMsgType

from app_client import run, serving
from engine_fixtures import env, sd_env, txt2img  # noqa: F401 (fixtures)
from nodegraph.server import editor as server_module

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
REPO = Path(__file__).resolve().parents[2]


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
            response = await client.post("/validate", json={"workflow": flow})
            assert response.status == 200
            body = await response.json()
            assert body["valid"] is False
            named = {(issue["node_id"], issue["input"]) for issue in body["node_errors"]}
            assert {("empty", "width"), ("empty", "height"), ("sample", "steps")} <= named
            assert await (await client.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
            good = await (await client.post("/validate", json={"workflow": txt2img()})).json()
            assert good == {"valid": True, "node_errors": []}
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
