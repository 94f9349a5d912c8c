"""The web editor: its page, its static files and the example workflows it offers."""

import json
from pathlib import Path

from aiohttp import web

from nodegraph.server.security import ApiError
from nodegraph.server.state import state

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
