"""Websocket connections by client, and executor events turned into the messages they receive."""

import asyncio
import io

from aiohttp import WSCloseCode, web

from nodegraph.executor import Event
from nodegraph.store import Store

PREVIEW_FRAME, JPEG_FORMAT = 1, 1  # binary websocket frames: 4-byte big-endian event type, 4-byte format, then bytes


class Hub:
    """Websocket connections by client id; each has its own send queue so its messages keep their order."""

    def __init__(self):
        self.clients: dict[str, set[asyncio.Queue]] = {}
        self.sockets: set[web.WebSocketResponse] = set()  # closed at shutdown, so a stop never waits on a browser tab

    async def close_all(self) -> None:
        for ws in list(self.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    def connect(self, client_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.clients.setdefault(client_id, set()).add(queue)
        return queue

    def disconnect(self, client_id: str, queue: asyncio.Queue) -> None:
        self.clients.get(client_id, set()).discard(queue)
        if not self.clients.get(client_id):
            self.clients.pop(client_id, None)

    def send(self, client_id: str | None, message: str | bytes) -> None:
        for queue in self.clients.get(client_id, ()) if client_id is not None else ():
            queue.put_nowait(message)

    def broadcast(self, message: str) -> None:
        for queues in self.clients.values():
            for queue in queues:
                queue.put_nowait(message)


def event_message(event: Event, prompt_id: str) -> dict:
    """An executor event as a websocket message: {"type", "data": {"prompt_id", "node", ...}}."""
    message = event.to_dict()
    data = message["data"]
    data.pop("run_id", None)
    data["prompt_id"] = prompt_id
    if "node_id" in data:
        data["node"] = data.pop("node_id")
    data.pop("traceback", None)  # kept in history, not pushed to the page
    return message


def preview_frame(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return PREVIEW_FRAME.to_bytes(4, "big") + JPEG_FORMAT.to_bytes(4, "big") + buffer.getvalue()


def status_message(store: Store) -> dict:
    return {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": store.pending_count()}}}}
