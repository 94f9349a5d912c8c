"""The server in ComfyUI's shapes: its routes (also under /api/), /prompt's body and answers, the queue,
history, interrupt and free."""

import asyncio
import json
import uuid

import pytest
from PIL import Image

from app_client import (api_prompt, events_until_done, of_prompt, queue, refused, run, serving, store_of, until_progress,
                        wait_for_history)
from engine_fixtures import env, sd_env, txt2img  # noqa: F401 (fixtures)
from nodegraph.server.state import STATE
from nodegraph.store import DuplicatePromptId, Store

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


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
    store = Store(tmp_path / "data" / "nodegraph.sqlite3")  # written before the server starts: its worker takes none
    ids = finished(store, 4)
    store.close()

    async def scenario():
        async with serving(env, tmp_path) as client:
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
