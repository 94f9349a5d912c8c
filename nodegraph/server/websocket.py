"""/ws: each client's events, in order, on its own send queue."""

import asyncio
import json
import os

from aiohttp import WSMsgType, web

from nodegraph.server.hub import status_message
from nodegraph.server.state import state

routes = web.RouteTableDef()


@routes.get("/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    server = state(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    client_id = request.query.get("client_id") or os.urandom(8).hex()
    queue = server.hub.connect(client_id)
    greeting = status_message(server.store)
    greeting["data"]["sid"] = client_id
    queue.put_nowait(json.dumps(greeting))

    async def send_all() -> None:
        while True:
            message = await queue.get()
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)

    sender = asyncio.create_task(send_all())
    server.hub.sockets.add(ws)
    try:
        async for message in ws:  # the page sends nothing we act on; reading keeps the connection serviced
            if message.type == WSMsgType.ERROR:
                break
    finally:
        sender.cancel()
        server.hub.sockets.discard(ws)
        server.hub.disconnect(client_id, queue)
    return ws
