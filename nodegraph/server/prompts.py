"""Queueing prompts as ComfyUI takes them: POST /prompt, GET /prompt, and /validate (ours, for the editor).

POST /prompt takes ComfyUI's body {prompt, client_id?, prompt_id?, extra_data?, front?, number?,
partial_execution_targets?} (our `workflow` key is an alias of `prompt`) with a workflow in any format, and answers
{prompt_id, number, node_errors: {}} or a 400 in ComfyUI's shape (error + node_errors by node id).
"""

import math
import re
import time
from dataclasses import dataclass

from aiohttp import web

from nodegraph.server.comfy_errors import prompt_error, rejection
from nodegraph.server.comfy_events import status_message
from nodegraph.server.security import ApiError
from nodegraph.server.state import ServerState, read_json, state
from nodegraph.store import DuplicatePromptId
from nodegraph.workflow import InvalidWorkflow, ValidWorkflow

routes = web.RouteTableDef()
PROMPT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # a UUID fits; nothing that is path syntax in /history/{id}


@dataclass
class Checked:
    valid: ValidWorkflow
    outputs: list[str]  # the output nodes to run


class PromptRefused(ApiError):
    """A workflow that must not be queued: 400 with ComfyUI's error and node_errors."""

    def __init__(self, body: dict):
        error = body["error"]
        super().__init__(400, error["type"], error["message"], error["details"], error["extra_info"],
                         node_errors=body["node_errors"])


def check_prompt(server: ServerState, data, targets: list[str] | None = None) -> Checked:
    """The workflow validated and within this server's limits, or PromptRefused saying why in ComfyUI's shape."""
    registry = server.executor.registry
    if not isinstance(data, dict):
        raise PromptRefused({"error": prompt_error("invalid_prompt", "Invalid prompt",
                                                   f"the prompt must be a JSON object, got {type(data).__name__}"),
                             "node_errors": {}})
    try:
        valid = server.executor.validate(data)
    except InvalidWorkflow as error:
        raise PromptRefused(rejection(error.issues, data, registry)) from None
    over = server.config.limits.workflow_issues(valid)
    if over:
        raise PromptRefused(rejection(over, data, registry))
    outputs = [node for node in valid.output_nodes if targets is None or node in targets]
    if not outputs:
        raise PromptRefused({"error": prompt_error("prompt_no_outputs", "Prompt has no outputs",
                                                   f"none of the partial execution targets {targets} is an output "
                                                   f"node; output nodes: {valid.output_nodes}"),
                             "node_errors": {}})
    return Checked(valid, outputs)


def bad_request(kind: str, message: str) -> ApiError:
    return ApiError(400, kind, message, message, node_errors={})


def optional_field(body: dict, name: str, types: tuple, expected: str):
    value = body.get(name)
    if value is not None and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
        raise bad_request("invalid_request", f"{name!r} must be {expected}, got {value!r}")
    return value


@routes.post("/prompt")
async def queue_prompt(request: web.Request) -> web.Response:
    body = await read_json(request)
    server = state(request)
    data = body.get("prompt", body.get("workflow"))
    if data is None:
        raise bad_request("no_prompt", "No prompt provided")
    client_id = optional_field(body, "client_id", (str,), "a string")
    extra_data = dict(optional_field(body, "extra_data", (dict,), "an object") or {})
    front = optional_field(body, "front", (bool,), "true or false")
    number = optional_field(body, "number", (int, float), "a number")
    if number is not None and not math.isfinite(number):
        raise bad_request("invalid_request", f"'number' must be finite, got {number!r}")
    targets = optional_field(body, "partial_execution_targets", (list,), "a list of node ids")
    if targets is not None and not all(isinstance(t, str) for t in targets):
        raise bad_request("invalid_request", "'partial_execution_targets' must be a list of node ids (strings)")
    prompt_id = optional_field(body, "prompt_id", (str,), "a string")
    if prompt_id is not None and not PROMPT_ID.fullmatch(prompt_id):
        raise bad_request("invalid_prompt_id", "prompt_id must be 1-128 letters, digits, '.', '_', ':' or '-' "
                          "(a UUID, for instance); omit it to let the server choose one")

    checked = check_prompt(server, data, targets)
    if client_id is not None:
        extra_data["client_id"] = client_id
    extra_data["create_time"] = int(time.time() * 1000)
    try:
        record = server.store.enqueue(data, client_id, prompt=checked.valid.prompt or {}, extra_data=extra_data,
                                      outputs_to_execute=checked.outputs, prompt_id=prompt_id, number=number,
                                      front=bool(front), format=checked.valid.format)
    except DuplicatePromptId as error:
        raise bad_request("duplicate_prompt_id", str(error)) from None
    server.hub.broadcast(status_message(server.store.pending_count()))
    return web.json_response({"prompt_id": record.prompt_id, "number": record.queue_number, "node_errors": {}})


@routes.get("/prompt")
async def queue_info(request: web.Request) -> web.Response:
    """ComfyUI's {"exec_info": {"queue_remaining": N}}, the running prompt counted."""
    return web.json_response(status_message(state(request).store.pending_count())["data"]["status"])


@routes.post("/validate")
async def validate_workflow(request: web.Request) -> web.Response:
    """The checks of /prompt without queueing: {"valid", "error", "node_errors"}, always 200 for a readable request.

    The editor asks here before queueing, so an invalid workflow is a result to show on its nodes, not a failed
    request (which browsers log as an error).
    """
    body = await read_json(request)
    targets = body.get("partial_execution_targets")
    try:
        check_prompt(state(request), body.get("prompt", body.get("workflow")), targets if isinstance(targets, list)
                     else None)
    except PromptRefused as refused:
        return web.json_response({"valid": False, **refused.body()})
    return web.json_response({"valid": True, "error": None, "node_errors": {}})
