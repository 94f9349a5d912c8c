"""The web editor: its page, its static files, the example workflows it offers, and /nodegraph/convert, which turns
any workflow the engine reads (ours, ComfyUI's API prompt, ComfyUI's UI file) into ours for the editor to open."""

import json
from pathlib import Path

from aiohttp import web

from nodegraph.formats import to_native
from nodegraph.server.comfy_errors import rejection
from nodegraph.server.security import ApiError
from nodegraph.server.state import read_json, state
from nodegraph.workflow import InvalidWorkflow

WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # package data, so a non-editable install serves the editor too
# The editor's own page may load only from this origin: nothing is fetched from elsewhere, and no other site frames it.
EDITOR_CSP = ("default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; script-src 'self'; "
              "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    page = WEB_DIR / "index.html"
    if not page.is_file():
        return web.Response(text="nodegraph server: the web editor is not installed", content_type="text/plain")
    return web.FileResponse(page, headers={"Content-Security-Policy": EDITOR_CSP, "Cache-Control": "no-cache"})


def example_workflow_names(folder: Path | None) -> list[str]:
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(path.name for path in Path(folder).glob("*.json") if not path.name.startswith(".")
                  and path.is_file() and not path.is_symlink())


@routes.get("/workflows")
async def list_workflows(request: web.Request) -> web.Response:
    """The example workflows (names of the JSON files in the examples folder), read-only."""
    return web.json_response({"workflows": example_workflow_names(state(request).config.workflows_dir)})


@routes.get("/workflows/{name}")
async def get_workflow(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    # Only names the listing offers: no path syntax, no symlink, nothing but the folder's own .json files.
    if name not in example_workflow_names(state(request).config.workflows_dir):
        raise ApiError(404, "not_found", f"no example workflow {name!r}")
    path = Path(state(request).config.workflows_dir) / name
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ApiError(500, "unreadable", f"example workflow {name!r} is unreadable: {error}") from error
    return web.json_response(workflow)


async def revalidate_editor_files(request: web.Request, response: web.StreamResponse) -> None:
    """The editor's modules are asked for again on each load, so an upgraded server never runs stale JavaScript."""
    if request.path.startswith("/web/"):
        response.headers["Cache-Control"] = "no-cache"


def add_static_files(app: web.Application) -> None:
    if WEB_DIR.is_dir():
        # follow_symlinks=False: a symlink in the folder never leads out of it; no directory listings either.
        app.router.add_static("/web/", WEB_DIR, follow_symlinks=False, show_index=False)
        app.on_response_prepare.append(revalidate_editor_files)


# --- opening ComfyUI's files -----------------------------------------------------------------------------------------


@routes.post("/nodegraph/convert")
async def convert(request: web.Request) -> web.Response:
    """{"workflow": data in any format} -> {"workflow": ours, "format"}. Problems of single nodes (a type this
    server lacks, a value that does not fit) come along as node_errors, so the editor opens the rest and says what
    it left out; a file that cannot be read as a workflow at all is a 400 in /prompt's error shape."""
    body = await read_json(request)
    data = body.get("workflow")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", 'expected {"workflow": {...}}: a workflow object in any format',
                       node_errors={})
    registry = state(request).executor.registry
    try:
        converted = to_native(data, registry)
    except InvalidWorkflow as error:
        return web.json_response(rejection(error.issues, data, registry), status=400)
    if any(issue.node_id is None for issue in converted.issues):  # the file as a whole: nothing sensible to open
        return web.json_response(rejection(converted.issues, data, registry), status=400)
    answer = {"workflow": converted.native, "format": converted.format}
    if converted.issues:
        answer["node_errors"] = rejection(converted.issues, data, registry)["node_errors"]
    return web.json_response(answer)
