"""The HTTP API and websocket, through aiohttp's test client on 127.0.0.1."""

import asyncio
import io
import json
import time

import pytest
from aiohttp import FormData
from PIL import Image

from app_client import events_until_done, of_prompt, png_bytes, queue, refused, run, serving
from engine_fixtures import env, sd_env, txt2img  # noqa: F401 (fixtures)
from nodegraph.server import Limits, ServerConfig, create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- running prompts ------------------------------------------------------------------------------------------------


def test_txt2img_prompt_reports_events_in_order_and_serves_its_image(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?clientId=me&previews=1")
            greeting = await ws.receive_json()
            assert greeting == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}
            prompt_id = await queue(client, txt2img(steps=3))
            previews = []
            events = await events_until_done(ws, {prompt_id}, previews)
            kinds = [e["type"] for e in of_prompt(events)]
            assert kinds[:2] == ["execution_start", "execution_cached"]
            assert kinds[-2:] == ["execution_success", "executing"]  # the end marker closes the prompt, as in ComfyUI
            assert events[-2]["type"] == "status"  # the queue is empty again before the end marker arrives
            assert events[-2]["data"]["status"]["exec_info"]["queue_remaining"] == 0
            progress = [e["data"] for e in events if e["type"] == "progress"]
            assert progress == [{"value": i, "max": 3, "prompt_id": prompt_id, "node": "sample"} for i in (1, 2, 3)]
            executing = [e["data"] for e in events if e["type"] == "executing" and e["data"]["node"]]
            assert [e["node"] for e in executing] == ["ckpt", "empty", "neg", "pos", "sample", "decode", "save"]
            assert all(e["display_node"] == e["node"] for e in executing)
            executed = {e["data"]["node"]: e["data"] for e in events if e["type"] == "executed"}
            assert set(executed) == {"save"}  # only nodes with something to show, as ComfyUI
            assert all(e["data"]["prompt_id"] == prompt_id for e in of_prompt(events))
            assert len(previews) == 3 and all(p[:8] == b"\0\0\0\1\0\0\0\1" and p[8:10] == b"\xff\xd8" for p in previews)

            image = executed["save"]["output"]["images"][0]
            response = await client.get("/view", params=image)
            assert response.status == 200 and response.headers["Content-Type"] == "image/png"
            assert Image.open(io.BytesIO(await response.read())).size == (64, 64)

            history = await (await client.get(f"/history/{prompt_id}")).json()
            entry = history[prompt_id]
            assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
            assert entry["outputs"]["save"]["images"] == [image]
            assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                   "execution_success"]
            assert set(entry["timings"]["nodes"]) == {e["node"] for e in executing}
            assert prompt_id in await (await client.get("/history")).json()
    run(scenario())


def test_new_seed_reports_checkpoint_prompts_and_latent_as_cached(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?client_id=me")  # our editor's spelling of clientId
            await events_until_done(ws, {await queue(client, txt2img(seed=1))})
            events = await events_until_done(ws, {await queue(client, txt2img(seed=2))})
            cached = next(e["data"]["nodes"] for e in events if e["type"] == "execution_cached")
            assert sorted(cached) == ["ckpt", "empty", "neg", "pos"]
            ran = [e["data"]["node"] for e in events if e["type"] == "executing" and e["data"]["node"]]
            assert ran == ["sample", "decode", "save"]
    run(scenario())


def test_concurrent_clients_get_their_own_events_in_queue_order(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            sockets = [await client.ws_connect(f"/ws?clientId=c{i}") for i in range(10)]

            async def queue_five(i):
                return [await queue(client, txt2img(seed=100 * i + j, steps=1), client_id=f"c{i}") for j in range(5)]

            owned = await asyncio.gather(*(queue_five(i) for i in range(10)))
            received = await asyncio.gather(*(events_until_done(ws, set(ids)) for ws, ids in zip(sockets, owned)))
            numbers = {}
            history = await (await client.get("/history", params={"max_items": "100"})).json()
            for ids, events in zip(owned, received):
                prompt_events = of_prompt(events)
                assert {e["data"]["prompt_id"] for e in prompt_events} == set(ids)  # all its own, none of another's
                for prompt_id in ids:
                    own = [e["type"] for e in prompt_events if e["data"]["prompt_id"] == prompt_id]
                    assert own[0] == "execution_start" and "execution_success" in own and "progress" in own
                    numbers[prompt_id] = history[prompt_id]["prompt"][0]
            assert len(numbers) == 50
            by_start = sorted(numbers, key=lambda p: history[p]["timings"]["started_at"])
            assert by_start == sorted(numbers, key=numbers.get)  # run in queue order
    run(scenario())


def test_queue_answers_quickly_while_a_prompt_samples(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?client_id=me")
            prompt_id = await queue(client, txt2img(steps=40, size=128))
            while (await ws.receive_json(timeout=60))["type"] != "progress":
                pass
            latencies = []
            for _ in range(10):
                started = time.perf_counter()
                response = await client.get("/queue")
                latencies.append(time.perf_counter() - started)
                body = await response.json()
                if not body["queue_running"]:
                    break
                assert body["queue_running"][0][1] == prompt_id
                await asyncio.sleep(0.02)
            assert len(latencies) >= 3 and max(latencies) < 0.1, latencies
            await client.post("/interrupt")
            await events_until_done(ws, {prompt_id})
    run(scenario())


def test_interrupt_stops_the_running_prompt_and_the_next_one_runs(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?clientId=me")
            first = await queue(client, txt2img(steps=200, size=64))
            while (await ws.receive_json(timeout=60))["type"] != "progress":
                pass
            second = await queue(client, txt2img(seed=5))
            response = await client.post("/interrupt")
            assert response.status == 200
            events = await events_until_done(ws, {first, second})
            ends = {e["data"]["prompt_id"]: e["type"] for e in events if e["type"] in (
                "execution_success", "execution_error", "execution_interrupted")}
            assert ends == {first: "execution_interrupted", second: "execution_success"}
            interrupted = next(e["data"] for e in events if e["type"] == "execution_interrupted")
            assert interrupted["node_id"] == "sample" and interrupted["node_type"] == "DDPMSample"
            assert interrupted["executed"] == ["ckpt", "empty", "neg", "pos"]
            history = await (await client.get("/history")).json()
            assert history[first]["status"]["status_str"] == "error"  # ComfyUI's word for a prompt that did not finish
            assert history[first]["status"]["completed"] is False
            assert history[first]["status"]["messages"][-1][0] == "execution_interrupted"
    run(scenario())


def test_interrupt_naming_another_prompt_leaves_the_running_one(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?clientId=me")
            first = await queue(client, txt2img(steps=12))
            while (await ws.receive_json(timeout=60))["type"] != "progress":
                pass
            assert (await client.post("/interrupt", json={"prompt_id": "not-this-one"})).status == 200
            events = await events_until_done(ws, {first})
            assert "execution_success" in [e["type"] for e in events]
    run(scenario())


def test_pending_prompts_can_be_deleted_from_the_queue(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            ws = await client.ws_connect("/ws?clientId=me")
            first = await queue(client, txt2img(steps=200))
            second = await queue(client, txt2img(seed=9))
            third = await queue(client, txt2img(seed=10))
            response = await client.post("/queue", json={"delete": [second]})
            assert response.status == 200
            queue_now = await (await client.get("/queue")).json()
            assert [p[1] for p in queue_now["queue_pending"]] == [third]
            assert (await client.post("/queue", json={"clear": True})).status == 200
            assert (await (await client.get("/queue")).json())["queue_pending"] == []
            await client.post("/interrupt")
            await events_until_done(ws, {first})
            assert await (await client.get(f"/history/{second}")).json() == {}  # gone, as in ComfyUI
            assert set(await (await client.get("/history")).json()) == {first}
    run(scenario())


# --- listings -------------------------------------------------------------------------------------------------------


def test_object_info_lists_nodes_with_file_choices(sd_env, tmp_path):
    (sd_env.input_dir / "photo.png").write_bytes(png_bytes())

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            native = await (await client.get("/object_info", params={"namespace": "native"})).json()
            assert "tiny.safetensors" in native["LoadCheckpoint"]["input"]["required"]["name"][0]
            assert native["LoadImage"]["input"]["required"]["name"][0] == ["photo.png"]
            assert native["DDPMSample"]["output"] == ["LATENT"] and native["DDPMSample"]["output_name"] == ["latent"]
            assert native["EmptyLatent"]["input"]["required"]["width"][1]["step"] == 8
            comfy = await (await client.get("/object_info")).json()
            assert comfy["KSampler"]["input"]["required"]["seed"][1]["control_after_generate"] is True
            stats = await (await client.get("/system_stats")).json()
            assert stats["devices"][0]["type"] == "cpu" and stats["system"]["pytorch_version"]
    run(scenario())


def test_upload_stores_a_decodable_image_in_the_input_folder(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path) as client:
            form = FormData(quote_fields=False)
            form.add_field("image", png_bytes(), filename="my photo.png", content_type="image/png")
            response = await client.post("/upload/image", data=form)
            assert response.status == 200, await response.text()
            assert (await response.json())["name"] == "my photo.png"
            assert (env.input_dir / "my photo.png").read_bytes() == png_bytes()
            form = FormData(quote_fields=False)
            form.add_field("image", png_bytes(color=(0, 0, 255)), filename="my photo.png")
            assert (await (await client.post("/upload/image", data=form)).json())["name"] == "my photo (1).png"
    run(scenario())


# --- refusals ---------------------------------------------------------------------------------------------------------


def test_malformed_and_invalid_requests_are_refused_and_the_server_keeps_serving(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            await refused(await client.post("/prompt", data=b"{not json"), 400, "not valid JSON")
            await refused(await client.post("/prompt", json=[1, 2]), 400, "JSON object")
            await refused(await client.post("/prompt", json={"client_id": "x"}), 400, "No prompt")
            broken = txt2img()
            broken["nodes"]["sample"]["inputs"]["cfg"] = "high"
            body = await refused(await client.post("/prompt", json={"prompt": broken}), 400, "failed validation")
            assert body["error"]["type"] == "prompt_outputs_failed_validation"
            assert list(body["node_errors"]) == ["sample"]
            error = body["node_errors"]["sample"]["errors"][0]
            assert error["type"] == "invalid_input_type" and error["extra_info"]["input_name"] == "cfg"
            assert error["extra_info"]["received_value"] == "high" and "number" in error["message"]
            assert body["node_errors"]["sample"]["dependent_outputs"] == ["save"]
            assert body["node_errors"]["sample"]["class_type"] == "DDPMSample"
            assert (await client.get("/queue")).status == 200
    run(scenario())


def test_over_limit_sizes_are_refused(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path, limits=Limits(max_width=128, max_steps=10, max_batch_size=2)) as client:
            flow = txt2img(size=256, steps=11)
            flow["nodes"]["empty"]["inputs"]["batch_size"] = 3
            body = await refused(await client.post("/prompt", json={"prompt": flow}), 400, "failed validation")
            named = {(node, e["extra_info"]["input_name"], e["type"]) for node, entry in body["node_errors"].items()
                     for e in entry["errors"]}
            assert named == {("empty", "width", "value_bigger_than_max"), ("sample", "steps", "value_bigger_than_max"),
                             ("empty", "batch_size", "value_bigger_than_max")}
            assert all("limit" in e["message"] for entry in body["node_errors"].values() for e in entry["errors"])
    run(scenario())


TRAVERSALS = ["../secret.png", "/etc/passwd", "..%2Fsecret.png", "a/../../secret.png", "link/secret.png",
              "secret.png\0.png", "..\\secret.png"]


def test_path_traversal_is_refused_in_every_file_parameter(sd_env, tmp_path):
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (sd_env.output_dir / "link").symlink_to(tmp_path)  # a symlink that escapes the output folder
    (sd_env.output_dir / "ok.png").write_bytes(png_bytes())

    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            assert (await client.get("/view", params={"filename": "ok.png"})).status == 200
            for bad in TRAVERSALS:
                response = await client.get("/view", params={"filename": bad})
                assert response.status in (400, 404), bad
                response = await client.get("/view", params={"filename": "secret.png", "subfolder": bad.rsplit("/", 1)[0] or bad})
                assert response.status in (400, 404), bad
            raw = await client.get("/view?filename=%2e%2e%2fsecret.png")  # percent-encoded on the wire
            assert raw.status == 400
            assert (await client.get("/view", params={"filename": "x.png", "type": "../"})).status == 400
            for bad in ["../x", "/tmp/x", "link/x", "a\0b", "sub/../../x"]:  # JSON is not URL-decoded: no %2F here
                for node_id, name in (("ckpt", "name"), ("save", "prefix")):
                    flow = txt2img()
                    flow["nodes"][node_id]["inputs"][name] = bad
                    response = await client.post("/prompt", json={"workflow": flow})  # our alias of "prompt"
                    assert response.status == 400, (node_id, bad)
                    node_errors = (await response.json())["node_errors"]
                    assert list(node_errors) == [node_id]
                    assert node_errors[node_id]["errors"][0]["extra_info"]["input_name"] == name
            form = FormData(quote_fields=False)
            form.add_field("image", png_bytes(), filename="x.png")
            form.add_field("subfolder", "../../escape")
            await refused(await client.post("/upload/image", data=form), 400, "..")
            form = FormData(quote_fields=False)
            form.add_field("image", png_bytes(), filename="../../escape.png")  # only the base name is kept
            assert (await (await client.post("/upload/image", data=form)).json())["name"] == "escape.png"
            assert not (tmp_path / "escape.png").exists()
    run(scenario())


def test_view_never_serves_html_or_script(env, tmp_path):
    (env.output_dir / "page.html").write_text("<script>alert(1)</script>")
    (env.output_dir / "image.svg").write_text("<svg onload='alert(1)'/>")

    async def scenario():
        async with serving(env, tmp_path) as client:
            for name in ("page.html", "image.svg"):
                await refused(await client.get("/view", params={"filename": name}), 415, "only")
    run(scenario())


def test_cross_origin_posts_and_sockets_are_refused(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path) as client:
            evil = {"Origin": "https://evil.example"}
            await refused(await client.post("/prompt", json={"prompt": txt2img()}, headers=evil), 403, "cross-origin")
            for path, body in (("/interrupt", {}), ("/queue", {"clear": True}), ("/history", {"clear": True}),
                               ("/free", {"free_memory": True}), ("/api/prompt", {"prompt": txt2img()}),
                               ("/validate", {"prompt": txt2img()})):
                await refused(await client.post(path, json=body, headers=evil), 403, "cross-origin")
            form = FormData(quote_fields=False)
            form.add_field("image", png_bytes(), filename="x.png")
            form.add_field("original_ref", json.dumps({"filename": "x.png"}))
            await refused(await client.post("/upload/mask", data=form, headers=evil), 403, "cross-origin")
            await refused(await client.post("/prompt", json={}, headers={"Sec-Fetch-Site": "cross-site"}), 403, "cross-site")
            response = await client.get("/ws", headers={**evil, "Upgrade": "websocket", "Connection": "Upgrade",
                                                        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw=="})
            assert response.status == 403
            same = {"Origin": f"http://127.0.0.1:{client.port}"}
            assert (await client.post("/prompt", json={"prompt": txt2img()}, headers=same)).status == 200
            await refused(await client.get("/queue", headers={"Host": "attacker.example"}), 403, "loopback")
    run(scenario())


def test_oversized_and_non_image_uploads_are_refused(env, tmp_path):
    async def scenario():
        async with serving(env, tmp_path, limits=Limits(max_upload_bytes=10_000, max_upload_pixels=64 * 64)) as client:
            for data, status, fragment in ((b"GIF89a not really" * 10, 415, "decode"), (png_bytes((100, 100)), 413, "pixels"),
                                           (b"\x89PNG" + bytes(20_000), 413, "bytes")):
                form = FormData(quote_fields=False)
                form.add_field("image", data, filename="x.png")
                await refused(await client.post("/upload/image", data=form), status, fragment)
            for path in ("/prompt", "/validate", "/history", "/queue", "/free", "/interrupt"):
                await refused(await client.post(path, data=b"{" + b" " * 3_000_000 + b"}"), 413, "")
            (env.output_dir / "big.png").write_bytes(png_bytes((100, 100)))
            form = FormData(quote_fields=False)
            form.add_field("image", png_bytes((100, 100)), filename="mask.png")
            form.add_field("original_ref", json.dumps({"filename": "big.png"}))
            await refused(await client.post("/upload/mask", data=form), 413, "pixels")
            assert list(env.input_dir.iterdir()) == []
    run(scenario())


def test_a_token_is_required_when_one_is_set(sd_env, tmp_path):
    async def scenario():
        async with serving(sd_env, tmp_path, auth_token="s3cret") as client:
            await refused(await client.get("/queue"), 401, "token")
            await refused(await client.get("/queue", headers={"Authorization": "Bearer wrong"}), 401, "token")
            for path in ("/api/object_info", "/models/checkpoints", "/view_metadata/checkpoints?filename=tiny.safetensors",
                         "/system_stats", "/history", "/ws?clientId=x"):
                await refused(await client.get(path), 401, "token")
            await refused(await client.post("/free", json={"free_memory": True}), 401, "token")
            assert (await client.get("/queue", headers={"Authorization": "Bearer s3cret"})).status == 200
            assert (await client.get("/queue", params={"token": "s3cret"})).status == 200
            assert (await client.get("/queue")).status == 200  # the cookie set by ?token= now carries it
            assert (await client.get("/api/queue")).status == 200
    run(scenario())


def test_binding_beyond_loopback_without_a_token_is_refused(env, tmp_path):
    with pytest.raises(ValueError, match="auth token"):
        create_app(ServerConfig(env=env, data_dir=tmp_path, host="0.0.0.0"))
