"""The server app behind aiohttp's test client on 127.0.0.1, for tests that need no separate process, and what
those tests say to it: prompts to queue, events to wait for, refusals to check."""

import asyncio
import contextlib
import io
import json

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from nodegraph.server import ServerConfig, create_app
from nodegraph.server.state import STATE
from nodegraph.store import Store


@contextlib.asynccontextmanager
async def serving(env, tmp_path, **config):
    app = create_app(ServerConfig(env=env, data_dir=tmp_path / "data", **config))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def run(coroutine, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=timeout))


def api_prompt(seed: int = 5, steps: int = 2, size: int = 64, checkpoint: str = "tiny.safetensors",
               prefix: str = "ComfyUI", text: str = "masterpiece best quality man") -> dict:
    """ComfyUI's default API prompt (its script_examples' one: ids "3" to "9", _meta titles as its frontend
    exports them), small enough for tests."""
    def node(class_type: str, title: str, **inputs) -> dict:
        return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}

    return {
        "3": node("KSampler", "KSampler", cfg=8, denoise=1, latent_image=["5", 0], model=["4", 0], negative=["7", 0],
                  positive=["6", 0], sampler_name="euler", scheduler="normal", seed=seed, steps=steps),
        "4": node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=checkpoint),
        "5": node("EmptyLatentImage", "Empty Latent Image", batch_size=1, height=size, width=size),
        "6": node("CLIPTextEncode", "CLIP Text Encode (Prompt)", clip=["4", 1], text=text),
        "7": node("CLIPTextEncode", "CLIP Text Encode (Prompt)", clip=["4", 1], text="bad hands"),
        "8": node("VAEDecode", "VAE Decode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", "Save Image", filename_prefix=prefix, images=["8", 0]),
    }


async def queue(client, workflow, client_id="me", **body):
    response = await client.post("/prompt", json={"prompt": workflow, "client_id": client_id, **body})
    assert response.status == 200, await response.text()
    return (await response.json())["prompt_id"]


async def events_until_done(ws, prompt_ids: set[str], previews: list | None = None) -> list[dict]:
    """JSON messages up to ComfyUI's end marker (executing with node null) of every prompt in `prompt_ids`."""
    seen, pending = [], set(prompt_ids)
    while pending:
        message = await ws.receive(timeout=60)
        if message.type == WSMsgType.BINARY:
            if previews is not None:
                previews.append(message.data)
            continue
        assert message.type == WSMsgType.TEXT, message
        event = json.loads(message.data)
        seen.append(event)
        if event["type"] == "executing" and event["data"]["node"] is None:
            pending.discard(event["data"]["prompt_id"])
    return seen


def of_prompt(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] != "status"]


def png_bytes(size=(16, 16), color=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


async def refused(response, status: int, fragment: str):
    assert response.status == status, (response.status, await response.text())
    body = await response.json()
    assert fragment in body["error"]["message"], body
    return body


def store_of(client) -> Store:
    return client.server.app[STATE].store


async def wait_for_history(client, prompt_id: str, timeout: float = 60) -> dict:
    """Poll /history/{id} as ComfyUI's polling clients do, until the prompt has finished."""
    for _ in range(int(timeout / 0.1)):
        history = await (await client.get(f"/history/{prompt_id}")).json()
        if prompt_id in history:
            return history[prompt_id]
        await asyncio.sleep(0.1)
    raise TimeoutError(prompt_id)


async def until_progress(ws) -> None:
    while True:
        message = await ws.receive(timeout=60)
        if message.type == WSMsgType.TEXT and json.loads(message.data)["type"] == "progress":
            return
