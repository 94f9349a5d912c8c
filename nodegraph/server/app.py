"""The application: middlewares, every route family (each route also under /api/, as ComfyUI serves them), the
worker's start and stop."""

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from nodegraph.executor import Executor
from nodegraph.server import editor, files, models, prompts, queue_history, system, websocket
from nodegraph.server.config import TOKEN_ENV, ServerConfig
from nodegraph.server.hub import Hub
from nodegraph.server.security import is_loopback, json_errors, security_middleware
from nodegraph.server.state import STATE, ServerState
from nodegraph.server.worker import Worker
from nodegraph.store import Store

log = logging.getLogger("nodegraph.server")
ROUTE_FAMILIES = (prompts, queue_history, files, models, system, websocket, editor)
API_PREFIX = "/api"  # ComfyUI's frontend calls every route under it; other clients call them without


def create_app(config: ServerConfig) -> web.Application:
    if not is_loopback(config.host) and not config.auth_token:
        raise ValueError(f"binding {config.host} exposes the server to the network: set an auth token "
                         f"(--auth-token or {TOKEN_ENV})")
    limits = config.limits
    app = web.Application(middlewares=[json_errors, security_middleware(config)],
                          client_max_size=max(limits.max_upload_bytes, limits.max_body_bytes) + 64 * 1024)
    for family in ROUTE_FAMILIES:
        add_routes_twice(app, family.routes)
    editor.add_static_files(app)
    store = Store(Path(config.data_dir) / "nodegraph.sqlite3")
    hub = Hub(previews_for_all=config.preview_method == "auto")
    app[STATE] = server = ServerState(config=config, executor=Executor(config.env), store=store, hub=hub)

    async def start_worker(app: web.Application) -> None:
        recovered = store.recover()
        if recovered:
            log.warning("re-queued %d prompt(s) interrupted by the last shutdown", len(recovered))
        server.worker = Worker(server.executor, store, server.hub, asyncio.get_running_loop())
        server.worker.start()

    async def stop_worker(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, server.worker.stop)
        store.close()

    async def close_sockets(app: web.Application) -> None:
        await server.hub.close_all()

    app.on_startup.append(start_worker)
    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(stop_worker)
    return app


def add_routes_twice(app: web.Application, routes: web.RouteTableDef) -> None:
    """Each route at its path and under /api/: one registration, both paths."""
    for route in routes:
        route.register(app.router)
        if isinstance(route, web.RouteDef):  # static folders (the editor's files) stay where they are
            web.RouteDef(route.method, API_PREFIX + route.path, route.handler, route.kwargs).register(app.router)


def serve(config: ServerConfig) -> None:
    app = create_app(config)
    print(f"nodegraph: serving http://{'[' + config.host + ']' if ':' in config.host else config.host}:{config.port}/",
          flush=True)
    web.run_app(app, host=config.host, port=config.port, print=None)
