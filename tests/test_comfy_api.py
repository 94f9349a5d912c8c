"""The server in ComfyUI's shapes: its routes (also under /api/), /prompt's body and answers, its events, queue,
history, node listing, files, model folders, and the store behind them."""

import asyncio
import io
import json
import sqlite3
import struct
import uuid

import pytest
from aiohttp import FormData, WSMsgType
from PIL import Image, PngImagePlugin

from app_client import api_prompt, events_until_done, of_prompt, png_bytes, queue, refused, run, serving
from engine_fixtures import env, img2img, sd_env, txt2img  # noqa: F401 (fixtures)
from nodegraph.nodes import builtin_registry
from nodegraph.server.state import STATE
from nodegraph.store import DuplicatePromptId, Store

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


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


# --- routes and /prompt --------------------------------------------------------------------------------------------


def test_every_route_answers_under_api_too(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            for path in ("/queue", "/prompt", "/object_info/KSampler", "/history", "/features", "/models"):
                plain, prefixed = await client.get(path), await client.get("/api" + path)
                assert plain.status == prefixed.status == 200, path
                assert await plain.json() == await prefixed.json(), path
            ws = await client.ws_connect("/api/ws?clientId=front")
            assert (await ws.receive_json())["data"]["sid"] == "front"
            response = await client.post("/api/prompt", json={"prompt": api_prompt(), "client_id": "front"})
            assert response.status == 200
            events = await events_until_done(ws, {(await response.json())["prompt_id"]})
            assert "execution_success" in [e["type"] for e in events]
    run(scenario())


def test_an_api_prompt_runs_with_its_client_chosen_id_and_extra_data(sd_env, tmp_path):
    prompt_id = str(uuid.uuid4())
    workflow = {"nodes": [], "links": [], "note": "what ComfyUI's frontend sends as extra_pnginfo.workflow"}

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?clientId=cli")
            await ws.receive_json()
            prompt = api_prompt()
            response = await client.post("/prompt", json={"prompt": prompt, "client_id": "cli", "prompt_id": prompt_id,
                                                          "extra_data": {"extra_pnginfo": {"workflow": workflow}}})
            answer = await response.json()
            assert response.status == 200 and answer == {"prompt_id": prompt_id, "number": answer["number"],
                                                         "node_errors": {}}
            assert isinstance(answer["number"], int)
            events = of_prompt(await events_until_done(ws, {prompt_id}))
            ran = [e["data"]["node"] for e in events if e["type"] == "executing" and e["data"]["node"]]
            assert ran == ["4", "5", "6", "7", "3", "8", "9"]  # the file's ids, in a dependency order
            executed = [e["data"] for e in events if e["type"] == "executed"]
            assert [(e["node"], e["display_node"]) for e in executed] == [("9", "9")]
            entry = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
            number, given_id, api, extra_data, outputs = entry["prompt"]
            assert (number, given_id, api, outputs) == (answer["number"], prompt_id, prompt, ["9"])
            assert extra_data["client_id"] == "cli" and extra_data["extra_pnginfo"] == {"workflow": workflow}
            assert isinstance(extra_data["create_time"], int)
            assert entry["format"] == "api" and entry["workflow"] == prompt
            image = entry["outputs"]["9"]["images"][0]
            assert entry["meta"]["9"] == {"node_id": "9", "display_node": "9", "parent_node": None,
                                          "real_node_id": "9"}
            with Image.open(sd_env.output_dir / image["subfolder"] / image["filename"]) as png:
                assert json.loads(png.text["prompt"]) == prompt  # ComfyUI's PNG chunks, from the prompt and extra_data
                assert json.loads(png.text["workflow"]) == workflow
    run(scenario())


def test_prompt_ids_are_unique_and_plain(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            chosen = str(uuid.uuid4())
            assert (await client.post("/prompt", json={"prompt": api_prompt(), "prompt_id": chosen})).status == 200
            body = await refused(await client.post("/prompt", json={"prompt": api_prompt(), "prompt_id": chosen}),
                                 400, "already")
            assert body["error"]["type"] == "duplicate_prompt_id" and body["node_errors"] == {}
            for bad in ("../history", "a/b", "", "x" * 200, 7):
                body = await refused(await client.post("/prompt", json={"prompt": api_prompt(), "prompt_id": bad}),
                                     400, "")
                assert body["error"]["type"] in ("invalid_prompt_id", "invalid_request"), bad
            await wait_for_history(client, chosen)
    run(scenario())


def test_body_fields_of_the_wrong_kind_are_refused_in_comfyuis_shape(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            for field, value in (("client_id", 5), ("extra_data", [1]), ("front", "yes"), ("number", "1"),
                                 ("number", True), ("partial_execution_targets", "9")):
                body = await refused(await client.post("/prompt", json={"prompt": api_prompt(), field: value}), 400,
                                     field)
                assert set(body) == {"error", "node_errors"}
                assert set(body["error"]) == {"type", "message", "details", "extra_info"}
            assert (await (await client.get("/queue")).json())["queue_pending"] == []
    run(scenario())


def test_partial_execution_targets_run_only_those_outputs(sd_env, tmp_path):
    prompt = api_prompt(prefix="first")
    prompt["10"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "second", "images": ["8", 0]}}

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            response = await client.post("/prompt", json={"prompt": prompt, "partial_execution_targets": ["10"]})
            entry = await wait_for_history(client, (await response.json())["prompt_id"])
            assert entry["prompt"][4] == ["10"] and list(entry["outputs"]) == ["10"]
            assert [p.name[:6] for p in sd_env.output_dir.iterdir()] == ["second"]
            body = await refused(await client.post("/prompt", json={"prompt": prompt, "partial_execution_targets": ["3"]}),
                                 400, "no outputs")
            assert body["error"]["type"] == "prompt_no_outputs"
    run(scenario())


def test_api_prompt_problems_are_all_named_by_node_and_input_and_nothing_runs(sd_env, tmp_path):
    prompt = api_prompt()
    prompt["3"]["inputs"].update(steps=0, cfg="lots", sampler_name="fastest")
    del prompt["3"]["inputs"]["model"]
    prompt["6"]["inputs"]["clip"] = ["4", 0]  # a MODEL where a CLIP goes
    prompt["7"]["inputs"]["clip"] = ["44", 1]  # no such node
    prompt["8"]["inputs"]["vae"] = ["4", 7]  # no such output
    prompt["5"]["inputs"]["width"] = 100000
    prompt["11"] = {"class_type": "FancyUpscaler", "inputs": {"image": ["8", 0]}, "_meta": {"title": "Upscale!"}}

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            body = await refused(await client.post("/prompt", json={"prompt": prompt}), 400, "Upscale!")
            assert body["error"]["type"] == "missing_node_type"
            assert body["error"]["extra_info"] == {"node_id": "11", "class_type": "FancyUpscaler",
                                                   "node_title": "Upscale!"}
            found = {(node, e["extra_info"].get("input_name"), e["type"]) for node, entry in body["node_errors"].items()
                     for e in entry["errors"]}
            assert found == {("3", "steps", "value_smaller_than_min"), ("3", "cfg", "invalid_input_type"),
                             ("3", "sampler_name", "value_not_in_list"), ("3", "model", "required_input_missing"),
                             ("6", "clip", "return_type_mismatch"), ("7", "clip", "bad_linked_input"),
                             ("8", "vae", "bad_linked_input"), ("5", "width", "value_bigger_than_max"),
                             ("11", None, "missing_node_type")}
            assert body["node_errors"]["3"]["class_type"] == "KSampler"
            assert body["node_errors"]["3"]["dependent_outputs"] == ["9"]
            for entry in body["node_errors"].values():
                assert all(e["message"] for e in entry["errors"])
            assert (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 0
            assert list(sd_env.output_dir.iterdir()) == []
    run(scenario())


def test_a_ui_workflow_with_a_node_type_we_lack_is_refused_naming_it(sd_env, tmp_path):
    ui = {"version": 0.4, "last_node_id": 9, "last_link_id": 1, "links": [[1, 3, 0, 9, 0, "IMAGE"]], "nodes": [
        {"id": 3, "type": "FancyUpscaler", "mode": 0, "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE",
                                                                                 "links": [1]}], "widgets_values": []},
        {"id": 9, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
         "outputs": [], "widgets_values": ["ComfyUI"]}]}

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            body = await refused(await client.post("/prompt", json={"prompt": ui}), 400, "FancyUpscaler")
            assert "3" in body["node_errors"]
            assert body["node_errors"]["3"]["class_type"] == "FancyUpscaler"
            assert body["node_errors"]["3"]["dependent_outputs"] == ["9"]
    run(scenario())


def test_the_limits_hold_for_api_prompts(sd_env, tmp_path):
    from nodegraph.server import Limits

    prompt = api_prompt(size=512, steps=30)

    async def scenario():
        async with serving(sd_env, tmp_path, limits=Limits(max_width=256, max_height=256, max_steps=20)) as client:
            body = await refused(await client.post("/prompt", json={"prompt": prompt}), 400, "failed validation")
            found = {(node, e["extra_info"]["input_name"], e["type"]) for node, entry in body["node_errors"].items()
                     for e in entry["errors"]}
            assert found == {("5", "width", "value_bigger_than_max"), ("5", "height", "value_bigger_than_max"),
                             ("3", "steps", "value_bigger_than_max")}
    run(scenario())


def test_validate_answers_in_the_prompt_error_shape(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ok = await (await client.post("/validate", json={"prompt": api_prompt()})).json()
            assert ok == {"valid": True, "error": None, "node_errors": {}}
            broken = api_prompt()
            broken["3"]["inputs"]["denoise"] = 2
            response = await client.post("/validate", json={"workflow": broken})
            answer = await response.json()
            assert response.status == 200 and answer["valid"] is False
            assert answer["error"]["type"] == "prompt_outputs_failed_validation"
            assert answer["node_errors"]["3"]["errors"][0]["type"] == "value_bigger_than_max"
            assert (await (await client.get("/queue")).json())["queue_pending"] == []
    run(scenario())


# --- queue, history, interrupt, free -----------------------------------------------------------------------------


def test_queue_lists_comfyuis_five_item_entries_and_counts_the_running_prompt(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?clientId=me")
            await ws.receive_json()
            running = await queue(client, txt2img(steps=200))
            await until_progress(ws)
            assert await (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 1}}
            waiting = await queue(client, api_prompt())
            listed = await (await client.get("/queue")).json()
            assert [entry[1] for entry in listed["queue_running"]] == [running]
            number, prompt_id, prompt, extra_data, outputs = listed["queue_pending"][0]
            assert (prompt_id, prompt, outputs) == (waiting, api_prompt(), ["9"])
            assert isinstance(number, int) and extra_data["client_id"] == "me"
            assert listed["queue_running"][0][2]["sample"]["class_type"] == "DDPMSample"  # a native one's API form
            assert (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 2
            await client.post("/queue", json={"clear": True})
            await client.post("/interrupt", json={"prompt_id": running})
            await events_until_done(ws, {running})
    run(scenario())


def test_front_and_number_place_prompts_in_comfyuis_order(tmp_path):
    store = Store(tmp_path / "queue.sqlite3")
    first = store.enqueue({"n": 1}).prompt_id
    late = store.enqueue({"n": 2}, number=99.5).prompt_id
    urgent = store.enqueue({"n": 3}, front=True)
    early = store.enqueue({"n": 4}, number=0.5).prompt_id
    assert urgent.queue_number == -3  # before everything numbered by arrival, as ComfyUI's -number
    order = [store.take_next(timeout=0).prompt_id for _ in range(4)]
    assert order == [urgent.prompt_id, early, first, late]
    with pytest.raises(DuplicatePromptId):
        store.enqueue({"n": 5}, prompt_id=first)
    store.close()


def test_the_answer_number_reflects_front_and_number(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            answers = []
            for extra in ({}, {"front": True}, {"number": 7.5}):
                response = await client.post("/prompt", json={"prompt": api_prompt(), **extra})
                answers.append(await response.json())
            assert answers[1]["number"] < 0 and answers[2]["number"] == 7.5
            for answer in answers:
                await wait_for_history(client, answer["prompt_id"])
    run(scenario())


def finished(store: Store, count: int) -> list[str]:
    ids = []
    for i in range(count):
        record = store.enqueue({"version": 1, "nodes": {}}, prompt={"n": i})
        store.take_next(timeout=0)
        store.finish(record.prompt_id, "success", outputs={"9": {"images": []}}, messages=[["execution_start", {}]])
        ids.append(record.prompt_id)
    return ids


def test_history_pages_like_comfyuis_and_can_be_deleted_or_cleared(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            ids = finished(store_of(client), 4)
            assert list(await (await client.get("/history")).json()) == ids  # in the order they finished
            assert list(await (await client.get("/history", params={"max_items": "2"})).json()) == ids[2:]
            assert list(await (await client.get("/history", params={"max_items": "2", "offset": "1"})).json()) == ids[1:3]
            entry = (await (await client.get(f"/history/{ids[0]}")).json())[ids[0]]
            assert set(entry) >= {"prompt", "outputs", "status", "meta", "workflow", "format", "timings"}
            assert entry["status"] == {"status_str": "success", "completed": True, "messages": [["execution_start", {}]]}
            await refused(await client.get("/history", params={"max_items": "many"}), 400, "integer")
            assert (await client.post("/history", json={"delete": [ids[1]]})).status == 200
            assert list(await (await client.get("/history")).json()) == [ids[0], ids[2], ids[3]]
            assert await (await client.get(f"/history/{ids[1]}")).json() == {}
            assert (await client.post("/history", json={"clear": True})).status == 200
            assert await (await client.get("/history")).json() == {}
            await refused(await client.post("/history", json={"delete": "all"}), 400, "list")
    run(scenario())


def test_free_drops_the_cached_outputs_so_the_next_run_loads_again(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?clientId=me")
            await events_until_done(ws, {await queue(client, api_prompt(seed=1))})
            executor = client.server.app[STATE].executor
            assert len(executor.cache) > 0
            assert (await client.post("/free", json={"unload_models": True, "free_memory": True})).status == 200
            for _ in range(50):
                if len(executor.cache) == 0:
                    break
                await asyncio.sleep(0.1)
            events = await events_until_done(ws, {await queue(client, api_prompt(seed=1))})
            assert next(e["data"]["nodes"] for e in events if e["type"] == "execution_cached") == []
    run(scenario())


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


# --- what the server knows --------------------------------------------------------------------------------------


def test_object_info_in_comfyuis_shape(sd_env, tmp_path):
    (sd_env.input_dir / "photo.png").write_bytes(png_bytes())

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            loader = (await (await client.get("/object_info/CheckpointLoaderSimple")).json())["CheckpointLoaderSimple"]
            assert "tiny.safetensors" in loader["input"]["required"]["ckpt_name"][0]
            assert loader["output"] == ["MODEL", "CLIP", "VAE"] and loader["output_name"] == ["MODEL", "CLIP", "VAE"]
            assert loader["output_is_list"] == [False, False, False]
            assert (loader["name"], loader["display_name"], loader["output_node"]) == (
                "CheckpointLoaderSimple", "Load Checkpoint", False)
            assert {"description", "category", "python_module", "input_order"} <= set(loader)
            info = await (await client.get("/object_info")).json()
            sampler = info["KSampler"]
            assert sampler["input_order"]["required"] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                                         "positive", "negative", "latent_image", "denoise"]
            assert list(sampler["input"]["required"]) == sampler["input_order"]["required"]
            seed = sampler["input"]["required"]["seed"][1]
            assert seed["control_after_generate"] is True and seed["min"] == 0
            steps = sampler["input"]["required"]["steps"]
            assert steps[0] == "INT" and (steps[1]["default"], steps[1]["min"], steps[1]["max"]) == (20, 1, 10000)
            assert "euler" in sampler["input"]["required"]["sampler_name"][0]
            assert sampler["input"]["required"]["model"][0] == "MODEL"
            assert info["CLIPTextEncode"]["input"]["required"]["text"][1]["multiline"] is True
            image = info["LoadImage"]["input"]["required"]["image"]
            assert image[0] == ["photo.png"] and image[1]["image_upload"] is True
            assert info["SaveImage"]["output_node"] is True and info["SaveImage"]["output"] == []
            assert await (await client.get("/object_info/NoSuchNode")).json() == {}
            native = await (await client.get("/object_info", params={"namespace": "native"})).json()
            assert "ComfyUI.VAEDecode" in native and native["VAEDecode"]["name"] == "VAEDecode"
            assert set(native["VAEDecode"]["input"]["required"]) != set(info["VAEDecode"]["input"]["required"])
            await refused(await client.get("/object_info", params={"namespace": "klingon"}), 400, "namespace")
    run(scenario())


def test_object_info_follows_every_nodes_declaration(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            info = await (await client.get("/object_info")).json()
            registry = builtin_registry()
            assert set(info) == {node.COMFY_TYPE for node in registry.comfy_nodes()}
            for node in registry.comfy_nodes():
                entry, specs = info[node.COMFY_TYPE], node.input_specs()
                assert entry["input_order"].get("required", []) + entry["input_order"].get("optional", []) == [
                    name for name in specs if not specs[name].optional] + [n for n in specs if specs[n].optional]
                assert entry["output"] == list(node.OUTPUTS.values()) and entry["output_name"] == list(node.OUTPUTS)
                for section in entry["input"].values():
                    for name, declared in section.items():
                        spec = specs[name]
                        if spec.kind == "constant" and not spec.required:
                            assert declared[1]["default"] == spec.default, (node.COMFY_TYPE, name)
                        if spec.multiple_of is not None:
                            assert declared[1]["step"] == spec.multiple_of, (node.COMFY_TYPE, name)
    run(scenario())


def test_system_stats_in_comfyuis_shape(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            stats = await (await client.get("/system_stats")).json()
            assert set(stats["system"]) >= {"os", "python_version", "embedded_python", "comfyui_version",
                                            "pytorch_version", "argv", "ram_total", "ram_free"}
            device = stats["devices"][0]
            assert set(device) == {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
                                   "torch_vram_free"}
            assert device["type"] == "cpu" and device["vram_total"] >= device["vram_free"] > 0
    run(scenario())


def safetensors_file(path, metadata: dict | None, tensor_bytes: bytes = b"\0" * 16) -> None:
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(tensor_bytes)]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    encoded = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + tensor_bytes)


def test_model_folders_embeddings_and_safetensors_metadata(sd_env, tmp_path):
    safetensors_file(sd_env.models_dir / "loras" / "style.safetensors", {"ss_network_dim": "8"}, b"garbage")
    safetensors_file(sd_env.models_dir / "loras" / "plain.safetensors", None)
    safetensors_file(sd_env.models_dir / "embeddings" / "sub" / "easy-negative.safetensors", None)

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            kinds = await (await client.get("/models")).json()
            assert {"checkpoints", "loras", "vae", "embeddings", "upscale_models", "controlnet"} <= set(kinds)
            assert "tiny.safetensors" in await (await client.get("/models/checkpoints")).json()
            assert await (await client.get("/models/loras")).json() == ["plain.safetensors", "style.safetensors"]
            await refused(await client.get("/models/passwords"), 404, "passwords")
            assert await (await client.get("/embeddings")).json() == ["sub/easy-negative"]
            metadata = await client.get("/view_metadata/loras", params={"filename": "style.safetensors"})
            assert await metadata.json() == {"ss_network_dim": "8"}  # the header alone: its tensor bytes are garbage
            await refused(await client.get("/view_metadata/loras", params={"filename": "plain.safetensors"}), 404, "")
            await refused(await client.get("/view_metadata/loras", params={"filename": "nope.safetensors"}), 404, "")
            for bad in ("../checkpoints/tiny.safetensors", "/etc/x.safetensors", "a\\b.safetensors"):
                response = await client.get("/view_metadata/loras", params={"filename": bad})
                assert response.status in (400, 404), bad
    run(scenario())


# --- files ----------------------------------------------------------------------------------------------------------


def rgba_png(size=(8, 8), alpha=128, text: dict | None = None) -> bytes:
    image = Image.new("RGBA", size, (200, 100, 50, alpha))
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_view_previews_and_channels_as_comfyui(env, tmp_path):
    (env.output_dir / "shot.png").write_bytes(rgba_png())
    (env.input_dir / "in.png").write_bytes(png_bytes(color=(0, 255, 0)))

    async def scenario():
        async with serving(env, tmp_path) as client:
            async def image(**params):
                response = await client.get("/view", params=params)
                assert response.status == 200, await response.text()
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                return response.headers["Content-Type"], Image.open(io.BytesIO(await response.read()))

            kind, webp = await image(filename="shot.png", preview="webp;50")
            assert kind == "image/webp" and webp.format == "WEBP"
            kind, jpeg = await image(filename="shot.png", preview="jpeg;80")
            assert kind == "image/jpeg" and jpeg.mode == "RGB"
            kind, _ = await image(filename="shot.png", preview="jpeg;80", channel="rgba")
            assert kind == "image/webp"  # an alpha channel asked for: webp, as ComfyUI
            kind, rgb = await image(filename="shot.png", channel="rgb")
            assert kind == "image/png" and rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (200, 100, 50)
            _, alpha = await image(filename="shot.png", channel="a")
            assert alpha.mode == "RGBA" and alpha.getpixel((0, 0)) == (0, 0, 0, 128)
            _, green = await image(filename="in.png [input]")  # ComfyUI's annotated name
            assert green.convert("RGB").getpixel((0, 0)) == (0, 255, 0)
            await refused(await client.get("/view", params={"filename": "shot.png", "channel": "cmyk"}), 400, "channel")
    run(scenario())


def test_upload_image_to_a_folder_type_and_subfolder(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            async def upload(data, **fields):
                form = FormData(quote_fields=False)
                form.add_field("image", data, filename="pic.png", content_type="image/png")
                for key, value in fields.items():
                    form.add_field(key, value)
                response = await client.post("/upload/image", data=form)
                assert response.status == 200, await response.text()
                return await response.json()

            assert await upload(png_bytes(), type="temp", subfolder="clips") == {"name": "pic.png",
                                                                                 "subfolder": "clips", "type": "temp"}
            assert (env.temp_dir / "clips" / "pic.png").read_bytes() == png_bytes()
            blue = png_bytes(color=(0, 0, 255))
            assert (await upload(blue, type="temp", subfolder="clips"))["name"] == "pic (1).png"
            assert (await upload(blue, type="temp", subfolder="clips", overwrite="true"))["name"] == "pic.png"
            assert (env.temp_dir / "clips" / "pic.png").read_bytes() == blue
            form = FormData(quote_fields=False)
            form.add_field("image", png_bytes(), filename="pic.png")
            form.add_field("type", "../models")
            await refused(await client.post("/upload/image", data=form), 400, "type")
    run(scenario())


def test_upload_mask_puts_the_masks_alpha_on_the_original(env, tmp_path):
    (env.input_dir / "photo.png").write_bytes(rgba_png(alpha=255, text={"parameters": "kept"}))
    mask = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, 4, 8))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")

    async def scenario():
        async with serving(env, tmp_path) as client:
            form = FormData(quote_fields=False)
            form.add_field("image", buffer.getvalue(), filename="clipspace-mask-1.png", content_type="image/png")
            form.add_field("original_ref", json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"}))
            form.add_field("type", "input")
            form.add_field("subfolder", "clipspace")
            response = await client.post("/upload/mask", data=form)
            assert await response.json() == {"name": "clipspace-mask-1.png", "subfolder": "clipspace", "type": "input"}
            with Image.open(env.input_dir / "clipspace" / "clipspace-mask-1.png") as result:
                assert result.mode == "RGBA" and result.text["parameters"] == "kept"
                assert result.getpixel((1, 1)) == (200, 100, 50, 255) and result.getpixel((6, 1)) == (200, 100, 50, 0)
    run(scenario())


def test_upload_mask_refuses_what_it_cannot_confine_or_combine(env, tmp_path):
    (env.input_dir / "photo.png").write_bytes(rgba_png())
    (tmp_path / "secret.png").write_bytes(rgba_png())

    async def scenario():
        async with serving(env, tmp_path) as client:
            async def post(reference, mask=None):
                form = FormData(quote_fields=False)
                form.add_field("image", mask or rgba_png(), filename="m.png")
                form.add_field("original_ref", reference if isinstance(reference, str) else json.dumps(reference))
                return await client.post("/upload/mask", data=form)

            for reference in ({"filename": "../secret.png", "type": "input"}, {"filename": "/etc/passwd"},
                              {"filename": "photo.png", "subfolder": "../..", "type": "input"},
                              {"filename": "photo.png", "type": "models"}):
                assert (await post(reference)).status == 400, reference
            await refused(await post("not json"), 400, "original_ref")
            await refused(await post({"filename": "photo.png", "type": "input"}, rgba_png(size=(4, 4))), 400, "size")
            await refused(await post({"filename": "missing.png", "type": "input"}), 404, "missing")
            assert sorted(p.name for p in env.input_dir.iterdir()) == ["photo.png"]
    run(scenario())


# --- the store ------------------------------------------------------------------------------------------------------


OLD_SCHEMA = """
CREATE TABLE prompts (
    number INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT NOT NULL UNIQUE, client_id TEXT, workflow TEXT NOT NULL,
    status TEXT NOT NULL, queued_at REAL NOT NULL, started_at REAL, finished_at REAL,
    outputs TEXT NOT NULL DEFAULT '{}', error TEXT, messages TEXT NOT NULL DEFAULT '[]',
    timings TEXT NOT NULL DEFAULT '{}');
CREATE INDEX prompts_by_status ON prompts (status, number);
INSERT INTO prompts (prompt_id, client_id, workflow, status, queued_at, finished_at, outputs)
    VALUES ('done', 'me', '{"version": 1, "nodes": {}}', 'success', 1.0, 2.0, '{"save": {"images": []}}');
INSERT INTO prompts (prompt_id, client_id, workflow, status, queued_at)
    VALUES ('waiting', 'me', '{"version": 1, "nodes": {}}', 'pending', 3.0);
"""


def test_a_database_of_the_first_schema_is_migrated_on_open(tmp_path):
    path = tmp_path / "nodegraph.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA)
    store = Store(path)
    done = store.finished("done").history_entry()
    assert done["prompt"] == [1, "done", {}, {}, []] and done["status"]["status_str"] == "success"
    assert done["format"] == "native"
    assert store.take_next(timeout=0).prompt_id == "waiting"  # its place in line kept
    added = store.enqueue({"version": 1, "nodes": {}}, "me", prompt={"1": {}}, extra_data={"client_id": "me"},
                          outputs_to_execute=["1"], front=True, format="api")
    assert store.get(added.prompt_id).queue_item() == [-3, added.prompt_id, {"1": {}}, {"client_id": "me"}, ["1"]]
    store.close()
    Store(path).close()  # opening a migrated file again changes nothing
