"""What every route reaches through its request: the config, the executor, the store, the hub and the worker."""

from dataclasses import dataclass

from aiohttp import web

from nodegraph.executor import Executor
from nodegraph.server.config import ServerConfig
from nodegraph.server.hub import Hub
from nodegraph.server.security import read_json as read_limited_json
from nodegraph.server.worker import Worker
from nodegraph.store import Store

STATE = web.AppKey("state", object)


@dataclass
class ServerState:
    config: ServerConfig
    executor: Executor
    store: Store
    hub: Hub
    worker: Worker | None = None


def state(request: web.Request) -> ServerState:
    return request.app[STATE]


async def read_json(request: web.Request, empty_ok: bool = False) -> dict:
    """The request's JSON object body, within this server's body limit; `empty_ok`: no body reads as {}."""
    return await read_limited_json(request, state(request).config.limits.max_body_bytes, empty_ok)
