"""Following and managing prompts as ComfyUI does: /queue, /history, /interrupt, /free.

GET /queue lists ComfyUI's 5-item entries [number, prompt_id, prompt, extra_data, outputs_to_execute]; GET /history
and /history/{id} ComfyUI's entries (prompt, outputs, status, meta) with our workflow, format and timings. The POSTs
answer 200 with no body, as ComfyUI's do.
"""

from aiohttp import web

from nodegraph.server.comfy_events import status_message
from nodegraph.server.security import ApiError
from nodegraph.server.state import read_json, state

routes = web.RouteTableDef()


def id_list(body: dict, key: str) -> list[str]:
    ids = body.get(key, [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "invalid_request", f'"{key}" must be a list of prompt ids')
    return ids


def query_int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as error:
        raise ApiError(400, "invalid_request", f"{name} must be an integer, got {value!r}") from error


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    running, pending = state(request).store.queue()
    return web.json_response({"queue_running": [r.queue_item() for r in running],
                              "queue_pending": [r.queue_item() for r in pending]})


@routes.post("/queue")
async def edit_queue(request: web.Request) -> web.Response:
    """{"clear": true} and/or {"delete": [prompt_id, ...]}: remove pending prompts (the running one: /interrupt)."""
    body = await read_json(request)
    server = state(request)
    to_delete = id_list(body, "delete")
    if body.get("clear"):
        server.store.clear_queue()
    server.store.cancel(to_delete)
    server.hub.broadcast(status_message(server.store.pending_count()))
    return web.Response(status=200)


@routes.post("/interrupt")
async def interrupt(request: web.Request) -> web.Response:
    """Stop the running prompt; with {"prompt_id"}, only if that is the one running."""
    body = await read_json(request, empty_ok=True)
    prompt_id = body.get("prompt_id")
    if prompt_id is not None and not isinstance(prompt_id, str):
        raise ApiError(400, "invalid_request", '"prompt_id" must be a string')
    state(request).worker.interrupt(prompt_id or None)
    return web.Response(status=200)


@routes.post("/free")
async def free(request: web.Request) -> web.Response:
    """{"unload_models": true} or {"free_memory": true}: drop the cached outputs, loaded models included, as soon
    as no prompt runs. (Models live in our output cache, so both do the same.)"""
    body = await read_json(request, empty_ok=True)
    if body.get("unload_models") or body.get("free_memory"):
        state(request).worker.request_free()
    return web.Response(status=200)


@routes.get("/history")
async def history(request: web.Request) -> web.Response:
    max_items, offset = query_int(request, "max_items"), query_int(request, "offset")
    if max_items is not None and max_items < 1:
        raise ApiError(400, "invalid_request", "max_items must be at least 1")
    records = state(request).store.history(max_items, offset)
    return web.json_response({r.prompt_id: r.history_entry() for r in records})


@routes.get("/history/{prompt_id}")
async def history_one(request: web.Request) -> web.Response:
    """{prompt_id: entry} once the prompt has finished; {} before (ComfyUI's clients poll this until it is there)."""
    record = state(request).store.finished(request.match_info["prompt_id"])
    return web.json_response({record.prompt_id: record.history_entry()} if record else {})


@routes.post("/history")
async def edit_history(request: web.Request) -> web.Response:
    """{"clear": true} and/or {"delete": [prompt_id, ...]}: forget finished prompts."""
    body = await read_json(request)
    to_delete = id_list(body, "delete")
    store = state(request).store
    if body.get("clear"):
        store.delete_history()
    if to_delete:
        store.delete_history(to_delete)
    return web.Response(status=200)
