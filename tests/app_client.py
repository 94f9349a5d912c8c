"""The server app behind aiohttp's test client on 127.0.0.1, for tests that need no separate process."""

import asyncio
import contextlib

from aiohttp.test_utils import TestClient, TestServer

from nodegraph.server import ServerConfig, create_app


@contextlib.asynccontextmanager
async def serving(env, tmp_path, **config):
    app = create_app(ServerConfig(env=env, data_dir=tmp_path / "data", **config))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def run(coroutine, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=timeout))
