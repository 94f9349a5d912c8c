"""A real `python -m nodegraph serve` process on 127.0.0.1: durability across SIGKILL."""

import os

import pytest

from engine_fixtures import env, sd_env, txt2img  # noqa: F401 (fixtures)
from live_server import ServerProcess


@pytest.fixture
def server(sd_env, tmp_path):
    process = ServerProcess(sd_env, tmp_path / "data")
    yield process
    process.stop()


def statuses(server, ids):
    history = server.get("/history?max_items=1000")
    return {prompt_id: history.get(prompt_id, {}).get("status", {}).get("status_str") for prompt_id in ids}


def test_sigkill_with_five_queued_prompts_loses_nothing(server, sd_env):
    server.start()
    done = server.post("/prompt", {"prompt": txt2img(seed=1), "client_id": "a"})["prompt_id"]
    server.wait_for(lambda: statuses(server, [done])[done] == "success")
    outputs_before = sorted(p.name for p in sd_env.output_dir.iterdir())

    queued = [server.post("/prompt", {"prompt": txt2img(seed=10 + i, steps=60), "client_id": "a"})["prompt_id"]
              for i in range(5)]
    running = server.wait_for(lambda: server.get("/queue")["queue_running"])[0][1]
    assert running == queued[0]
    server.kill()

    server.start()
    server.wait_for(lambda: set(statuses(server, queued).values()) == {"success"}, timeout=240)
    history = server.get("/history?max_items=1000")
    assert history[done]["status"]["status_str"] == "success"  # earlier history kept
    assert [m[0] for m in history[running]["status"]["messages"]].count("execution_interrupted") == 1
    assert all(name in os.listdir(sd_env.output_dir) for name in outputs_before)
    assert len(list(sd_env.output_dir.glob("txt2img_*.png"))) == 6
    numbers = [history[p]["prompt"][0] for p in queued]
    started = [history[p]["timings"]["started_at"] for p in queued]
    assert sorted(numbers) == numbers and sorted(started) == started  # still run in queue order
