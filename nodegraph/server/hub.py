"""Websocket connections by client id, and delivery of messages to them.

Each connection has its own send queue, so its messages keep their order. A message for a client with no socket
open is kept a while (progress aside) and delivered when one connects: a client that queues a prompt and then opens
its socket still sees the prompt end, however fast it ran.
"""

import asyncio
import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, web

MISSED_PER_CLIENT = 200  # messages kept for a client without a socket
MISSED_CLIENTS = 100  # clients with kept messages (the oldest are forgotten first)
MISSED_SECONDS = 600.0


@dataclass(eq=False)
class Connection:
    client_id: str
    previews: bool  # this socket receives binary preview frames
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class Hub:
    def __init__(self, previews_for_all: bool = False):
        self.previews_for_all = previews_for_all  # serve --preview-method auto
        self.clients: dict[str, set[Connection]] = {}
        self.sockets: set[web.WebSocketResponse] = set()  # closed at shutdown, so a stop never waits on a browser tab
        self.missed: OrderedDict[str, deque] = OrderedDict()  # client id -> deque of (time, text)

    async def close_all(self) -> None:
        for ws in list(self.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    def connect(self, client_id: str, previews: bool, greeting: dict) -> Connection:
        """A new socket of `client_id`: `greeting` first, then what the client missed while it had none."""
        connection = Connection(client_id, previews or self.previews_for_all)
        connection.queue.put_nowait(json.dumps(greeting))
        deadline = time.monotonic() - MISSED_SECONDS
        for sent_at, text in self.missed.pop(client_id, ()):
            if sent_at >= deadline:
                connection.queue.put_nowait(text)
        self.clients.setdefault(client_id, set()).add(connection)
        return connection

    def disconnect(self, connection: Connection) -> None:
        connections = self.clients.get(connection.client_id, set())
        connections.discard(connection)
        if not connections:
            self.clients.pop(connection.client_id, None)

    def send(self, client_id: str | None, message: dict, keep_if_missed: bool = True) -> None:
        """To every socket of `client_id`; kept for its next socket if it has none (unless `keep_if_missed` is
        false, for messages worth nothing later such as progress)."""
        if client_id is None:
            return
        text = json.dumps(message)
        connections = self.clients.get(client_id)
        if connections:
            for connection in connections:
                connection.queue.put_nowait(text)
        elif keep_if_missed:
            kept = self.missed.setdefault(client_id, deque(maxlen=MISSED_PER_CLIENT))
            self.missed.move_to_end(client_id)
            kept.append((time.monotonic(), text))
            while len(self.missed) > MISSED_CLIENTS:
                self.missed.popitem(last=False)

    def broadcast(self, message: dict) -> None:
        text = json.dumps(message)
        for connections in self.clients.values():
            for connection in connections:
                connection.queue.put_nowait(text)

    def send_preview(self, client_id: str | None, frame: bytes) -> None:
        """A binary preview frame to the sockets that take previews: the client's, or every one for no client."""
        targets = self.clients.get(client_id, ()) if client_id is not None else (
            connection for connections in self.clients.values() for connection in connections)
        for connection in list(targets):
            if connection.previews:
                connection.queue.put_nowait(frame)
