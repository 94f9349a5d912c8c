"""/ws?clientId=ID (or ?client_id=): each client's events, in order, on its own send queue.

The first message is ComfyUI's status with the socket's sid; a socket that connects while its client's prompt runs
is told the node running now, and receives what its client missed while it had no socket open. `&previews=1` asks
for binary preview frames (sent to every socket when the server runs with --preview-method auto). A first message
{"type": "feature_flags"} is answered with the server's flags, as ComfyUI's frontend expects.
"""

import asyncio
import json
import uuid

from aiohttp import WSMsgType, web

from nodegraph.server.comfy_events import status_message
from nodegraph.server.state import state
from nodegraph.server.system import server_features

routes = web.RouteTableDef()


@routes.get("/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    server = state(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    client_id = request.query.get("clientId") or request.query.get("client_id") or uuid.uuid4().hex
    previews = request.query.get("previews") in ("1", "true")
    connection = server.hub.connect(client_id, previews, status_message(server.store.pending_count(), sid=client_id))
    running = server.worker.current_node(client_id) if server.worker else None
    if running is not None:
        connection.queue.put_nowait(json.dumps({"type": "executing", "data": {
            "node": running[1], "display_node": running[1], "prompt_id": running[0]}}))

    async def send_all() -> None:
        while True:
            message = await connection.queue.get()
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)

    sender = asyncio.create_task(send_all())
    server.hub.sockets.add(ws)
    first = True
    try:
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                break
            if message.type == WSMsgType.TEXT and first:
                first = False
                if is_feature_flags(message.data):
                    connection.queue.put_nowait(json.dumps({
                        "type": "feature_flags", "data": server_features(server.config.limits.max_upload_bytes)}))
    finally:
        sender.cancel()
        server.hub.sockets.discard(ws)
        server.hub.disconnect(connection)
    return ws


def is_feature_flags(text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") == "feature_flags"
