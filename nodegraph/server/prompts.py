"""Queueing and following prompts: /prompt, /validate, /queue, /interrupt, /history."""

import json

from aiohttp import web

from nodegraph.server.hub import status_message
from nodegraph.server.security import ApiError
from nodegraph.server.state import ServerState, read_json, state
from nodegraph.workflow import InvalidWorkflow, WorkflowIssue

routes = web.RouteTableDef()


def workflow_issues(server: ServerState, workflow) -> list[WorkflowIssue]:
    """Everything that keeps `workflow` from being queued: validation and this server's limits."""
    issues = []
    try:
        server.executor.validate(workflow)
    except InvalidWorkflow as error:
        issues = list(error.issues)
    if isinstance(workflow, dict):
        issues += server.config.limits.workflow_issues(workflow)
    return issues


@routes.post("/prompt")
async def queue_prompt(request: web.Request) -> web.Response:
    body = await read_json(request)
    workflow = body.get("workflow", body.get("prompt"))
    server = state(request)
    issues = workflow_issues(server, workflow)
    if issues:
        raise ApiError(400, "invalid_workflow", "\n".join(str(issue) for issue in issues),
                       node_errors=[issue.to_dict() for issue in issues])
    client_id = body.get("client_id")
    record = server.store.enqueue(workflow, client_id if isinstance(client_id, str) else None)
    server.hub.broadcast(json.dumps(status_message(server.store)))
    return web.json_response({"prompt_id": record.prompt_id, "number": record.number, "node_errors": {}})


@routes.post("/validate")
async def validate_workflow(request: web.Request) -> web.Response:
    """The checks of /prompt without queueing: {"valid", "node_errors"}, always 200 for a readable request.

    The editor asks here before queueing, so an invalid workflow is a result to show on its nodes, not a failed
    request (which browsers log as an error).
    """
    body = await read_json(request)
    issues = workflow_issues(state(request), body.get("workflow", body.get("prompt")))
    return web.json_response({"valid": not issues, "node_errors": [issue.to_dict() for issue in issues]})


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    running, pending = state(request).store.queue()
    return web.json_response({"queue_running": [r.summary() for r in running],
                              "queue_pending": [r.summary() for r in pending]})


@routes.post("/queue")
async def edit_queue(request: web.Request) -> web.Response:
    """{"delete": [prompt_id, ...]} or {"clear": true}: cancel pending prompts (the running one: /interrupt)."""
    body = await read_json(request)
    store = state(request).store
    ids = body.get("delete", [])
    if body.get("clear"):
        ids = [r.prompt_id for r in store.queue()[1]]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "invalid_request", '"delete" must be a list of prompt ids')
    cancelled = store.cancel(ids)
    state(request).hub.broadcast(json.dumps(status_message(store)))
    return web.json_response({"cancelled": cancelled})


@routes.post("/interrupt")
async def interrupt(request: web.Request) -> web.Response:
    server = state(request)
    running = server.worker.running_id
    if running is not None:
        server.executor.interrupt()
    return web.json_response({"interrupted": running})


@routes.get("/history")
async def history(request: web.Request) -> web.Response:
    try:
        limit = max(1, min(int(request.query.get("max_items", 100)), 10000))
    except ValueError as error:
        raise ApiError(400, "invalid_request", "max_items must be an integer") from error
    records = state(request).store.history(limit)
    return web.json_response({r.prompt_id: r.history_entry() for r in records})


@routes.get("/history/{prompt_id}")
async def history_one(request: web.Request) -> web.Response:
    record = state(request).store.get(request.match_info["prompt_id"])
    if record is None:
        raise ApiError(404, "not_found", f"no prompt {request.match_info['prompt_id']!r}")
    return web.json_response({record.prompt_id: record.history_entry()})
