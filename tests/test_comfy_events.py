"""The server's websocket in ComfyUI's shapes: its events, who gets them, previews."""

import json

import pytest
from aiohttp import WSMsgType

from app_client import (api_prompt, events_until_done, of_prompt, png_bytes, queue, run, serving, until_progress, wait_for_history)
from engine_fixtures import env, img2img, sd_env, txt2img  # noqa: F401 (fixtures)
from nodegraph.nodes import builtin_registry

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- events ---------------------------------------------------------------------------------------------------------


def test_a_failing_node_reports_execution_error_with_comfyuis_fields(sd_env, tmp_path, monkeypatch):
    def explode(self, ctx, **inputs):
        raise RuntimeError("the latent is cursed")

    monkeypatch.setattr(builtin_registry().get_comfy("EmptyLatentImage"), "run", explode)

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?clientId=me")
            prompt_id = await queue(client, api_prompt())
            events = of_prompt(await events_until_done(ws, {prompt_id}))
            error = next(e["data"] for e in events if e["type"] == "execution_error")
            assert {k: error[k] for k in ("prompt_id", "node_id", "node_type", "executed", "exception_message",
                                          "exception_type")} == {
                "prompt_id": prompt_id, "node_id": "5", "node_type": "EmptyLatentImage", "executed": ["4"],
                "exception_message": "the latent is cursed", "exception_type": "RuntimeError"}
            assert error["current_inputs"] == {"width": [64], "height": [64], "batch_size": [1]}
            assert "4" in error["current_outputs"] and isinstance(error["timestamp"], int)
            assert isinstance(error["traceback"], list) and any("explode" in line for line in error["traceback"])
            assert [e["type"] for e in events][-2:] == ["execution_error", "executing"]
            entry = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
            assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
            assert entry["status"]["messages"][-1] == ["execution_error", error]
    run(scenario())


def test_a_prompt_that_is_no_longer_valid_when_its_turn_comes_ends_in_execution_error(sd_env, tmp_path):
    (sd_env.input_dir / "example.png").write_bytes(png_bytes((64, 64)))

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?clientId=me")
            first = await queue(client, txt2img(steps=200))
            await until_progress(ws)
            second = await queue(client, img2img())
            (sd_env.input_dir / "example.png").unlink()  # while it waits
            await client.post("/interrupt")
            events = of_prompt(await events_until_done(ws, {first, second}))
            own = [e for e in events if e["data"]["prompt_id"] == second]
            assert [e["type"] for e in own] == ["execution_start", "execution_error", "executing"]
            error = own[1]["data"]
            assert error["node_id"] == "image" and error["exception_type"] == "InvalidWorkflow"
            assert "example.png" in error["exception_message"]
            entry = (await (await client.get(f"/history/{second}")).json())[second]
            assert entry["status"]["status_str"] == "error"
    run(scenario())


def test_a_socket_that_connects_after_the_post_still_sees_the_end(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            response = await client.post("/prompt", json={"prompt": api_prompt(), "client_id": "late"})
            prompt_id = (await response.json())["prompt_id"]
            await wait_for_history(client, prompt_id)
            ws = await client.ws_connect("/ws?clientId=late")
            assert (await ws.receive_json())["data"] == {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "late"}
            events = await events_until_done(ws, {prompt_id})
            assert "execution_success" in [e["type"] for e in events]
            assert "progress" not in [e["type"] for e in events]  # progress is not worth keeping for later
    run(scenario())


def test_a_socket_joining_mid_run_is_told_the_node_running_now(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            first = await client.ws_connect("/ws?clientId=me")
            prompt_id = await queue(client, txt2img(steps=200))
            await until_progress(first)
            second = await client.ws_connect("/ws?clientId=me")
            greeting = await second.receive_json()
            assert greeting["data"]["status"]["exec_info"]["queue_remaining"] == 1
            assert await second.receive_json() == {"type": "executing", "data": {
                "node": "sample", "display_node": "sample", "prompt_id": prompt_id}}
            await client.post("/interrupt")
            await events_until_done(second, {prompt_id})
    run(scenario())


def test_previews_go_only_to_sockets_that_ask_unless_the_server_sends_them_to_all(sd_env, tmp_path):
    async def frames_seen(preview_method: str) -> tuple[int, int]:
        async with serving(sd_env, tmp_path / preview_method, preview_method=preview_method) as client:
            asking = await client.ws_connect("/ws?clientId=me&previews=1")
            plain = await client.ws_connect("/ws?clientId=me")
            prompt_id = await queue(client, txt2img(steps=3))
            counts = []
            for ws in (asking, plain):
                previews = []
                await events_until_done(ws, {prompt_id}, previews)
                counts.append(len(previews))
            return counts[0], counts[1]

    async def scenario():
        assert await frames_seen("none") == (3, 0)  # ComfyUI's default: no previews
        assert await frames_seen("auto") == (3, 3)
    run(scenario())


def test_a_prompt_without_client_id_broadcasts_only_what_comfyui_broadcasts(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            watcher = await client.ws_connect("/ws?clientId=watcher")
            await watcher.receive_json()
            response = await client.post("/prompt", json={"prompt": api_prompt(steps=2)})
            prompt_id = (await response.json())["prompt_id"]
            await wait_for_history(client, prompt_id)
            kinds = []
            while True:
                message = await watcher.receive(timeout=1)
                if message.type != WSMsgType.TEXT:
                    break
                event = json.loads(message.data)
                kinds.append(event["type"])
                if event["type"] == "status" and event["data"]["status"]["exec_info"]["queue_remaining"] == 0:
                    break
            assert set(kinds) == {"status", "progress"}
    run(scenario())


def test_feature_flags_are_answered_on_the_socket_and_served(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            features = await (await client.get("/features")).json()
            assert features["supports_preview_metadata"] is False and features["max_upload_size"] > 0
            ws = await client.ws_connect("/ws")
            greeting = await ws.receive_json()
            assert greeting["type"] == "status" and len(greeting["data"]["sid"]) == 32  # a new sid when none given
            await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            assert await ws.receive_json(timeout=5) == {"type": "feature_flags", "data": features}
    run(scenario())
