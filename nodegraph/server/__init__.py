"""The HTTP and websocket face of the executor: routes over one worker thread and the durable store.

Run with `python -m nodegraph serve`. The executor runs prompts one at a time in a worker thread, so the event loop
always answers; every event of a prompt goes to the websocket(s) of the client that queued it.

It speaks ComfyUI's shapes (routes, bodies, events), so ComfyUI's clients work unchanged; our editor uses the same.

Modules: config (what it is started with), security (errors as JSON, Host/token/Origin checks), hub (websocket
clients and delivery), worker (the thread running prompts), state (what routes reach), app (the application); the
ComfyUI shapes: comfy_events (executor events as ComfyUI's messages), comfy_errors (validation problems as its
node_errors), comfy_shapes (node types as its /object_info); and one module per route family: prompts,
queue_history, files, models, system, websocket, editor.
"""

from nodegraph.server.app import create_app, serve
from nodegraph.server.config import TOKEN_ENV, Limits, ServerConfig

__all__ = ["Limits", "ServerConfig", "TOKEN_ENV", "create_app", "serve"]
