"""ComfyUI's clients, unchanged, get an image from a real `python -m nodegraph serve` on the tiny checkpoint.

Two are ComfyUI's own script_examples (basic_api_example.py and websockets_api_example.py), followed step by step
as they talk to a server: urllib for HTTP, websocket-client for /ws. One is a client library from PyPI,
comfy-api-simplified 1.6.0, used as its README shows.
"""

import io
import json
import urllib.parse
import urllib.request
import uuid

import pytest
from PIL import Image

from app_client import api_prompt
from engine_fixtures import folders_env
from live_server import ServerProcess
from nodegraph.nodes import Environment

pytestmark = pytest.mark.slow  # a server process, shared by the tests of this module


@pytest.fixture(scope="module")
def sd_env(tmp_path_factory, tiny_checkpoint) -> Environment:
    return folders_env(tmp_path_factory.mktemp("comfy_clients"), tiny_checkpoint)


@pytest.fixture(scope="module")
def server(sd_env):
    process = ServerProcess(sd_env, sd_env.models_dir.parent / "data")
    process.start()
    yield process
    process.stop()


def as_exported(prompt: dict) -> str:
    """The API prompt as ComfyUI's frontend exports it (the text the examples paste)."""
    return json.dumps(prompt, indent=4)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_websockets_api_example(server):
    import websocket  # websocket-client, as the example imports it

    address, client_id = server.address, str(uuid.uuid4())
    prompt = json.loads(as_exported(api_prompt()))
    prompt["6"]["inputs"]["text"] = "masterpiece best quality man"
    prompt["3"]["inputs"]["seed"] = 5

    def queue_prompt(prompt):
        data = json.dumps({"prompt": prompt, "client_id": client_id}).encode("utf-8")
        return json.loads(urllib.request.urlopen(urllib.request.Request(f"http://{address}/prompt", data=data)).read())

    def get_image(filename, subfolder, folder_type):
        url_values = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        with urllib.request.urlopen(f"http://{address}/view?{url_values}") as response:
            return response.read()

    def get_history(prompt_id):
        with urllib.request.urlopen(f"http://{address}/history/{prompt_id}") as response:
            return json.loads(response.read())

    ws = websocket.WebSocket()
    ws.connect(f"ws://{address}/ws?clientId={client_id}", timeout=120)
    prompt_id = queue_prompt(prompt)["prompt_id"]
    while True:
        out = ws.recv()
        if isinstance(out, str):
            message = json.loads(out)
            if message["type"] == "executing":
                data = message["data"]
                if data["node"] is None and data["prompt_id"] == prompt_id:
                    break
    ws.close()
    history = get_history(prompt_id)[prompt_id]
    output_images = {}
    for node_id, node_output in history["outputs"].items():
        if "images" in node_output:
            output_images[node_id] = [get_image(i["filename"], i["subfolder"], i["type"]) for i in node_output["images"]]
    assert list(output_images) == ["9"] and len(output_images["9"]) == 1
    image = decoded(output_images["9"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    assert json.loads(image.text["prompt"]) == prompt


def test_basic_api_example(server, sd_env):
    """It posts {"prompt"} alone, with urllib's defaults (no Content-Type), and does not wait; a client that wants
    the image polls /history/{id} until it is there, as several do."""
    prompt = json.loads(as_exported(api_prompt()))
    prompt["6"]["inputs"]["text"] = "masterpiece best quality man"
    prompt["3"]["inputs"]["seed"] = 5
    data = json.dumps({"prompt": prompt}).encode("utf-8")
    answer = json.loads(urllib.request.urlopen(urllib.request.Request(f"{server.base}/prompt", data=data)).read())
    assert set(answer) == {"prompt_id", "number", "node_errors"} and answer["node_errors"] == {}
    prompt_id = answer["prompt_id"]
    entry = server.wait_for(lambda: server.get(f"/history/{prompt_id}").get(prompt_id))
    assert entry["status"]["completed"] is True
    image = entry["outputs"]["9"]["images"][0]
    assert (sd_env.output_dir / image["filename"]).is_file()


def test_comfy_api_simplified_from_pypi(server):
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    api = ComfyApiWrapper(server.base)
    workflow = ComfyWorkflowWrapper(json.loads(as_exported(api_prompt())))
    workflow.set_node_param("KSampler", "seed", 7)
    workflow.set_node_param("Empty Latent Image", "batch_size", 2)
    assert api.get_system_stats()["devices"][0]["type"] == "cpu"
    assert "tiny.safetensors" in api.get_object_info("CheckpointLoaderSimple")["CheckpointLoaderSimple"][
        "input"]["required"]["ckpt_name"][0]
    images = api.queue_and_wait_images(workflow, "Save Image")
    assert len(images) == 2
    for name, data in images.items():
        assert name.startswith("ComfyUI_") and decoded(data).size == (64, 64)
    assert api.get_queue() == {"queue_running": [], "queue_pending": []}
