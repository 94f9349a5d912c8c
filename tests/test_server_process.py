"""A real `python -m nodegraph serve` process on 127.0.0.1: durability across SIGKILL."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine_fixtures import env, sd_env, txt2img  # noqa: F401 (fixtures)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, env, data_dir: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "nodegraph", "serve", "--port", str(self.port), "--models",
                        str(env.models_dir), "--input", str(env.input_dir), "--output", str(env.output_dir),
                        "--data", str(data_dir), "--device", "cpu", "--dtype", "fp32"]
        self.log = data_dir.parent / "server.log"
        self.process = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.get("/queue")
                return
            except OSError:
                assert self.process.poll() is None, self.log.read_text()
                time.sleep(0.2)
        raise TimeoutError(self.log.read_text())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def wait_for(self, condition, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(self.log.read_text()[-3000:])


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
    done = server.post("/prompt", {"workflow": txt2img(seed=1), "client_id": "a"})["prompt_id"]
    server.wait_for(lambda: statuses(server, [done])[done] == "success")
    outputs_before = sorted(p.name for p in sd_env.output_dir.iterdir())

    queued = [server.post("/prompt", {"workflow": txt2img(seed=10 + i, steps=25), "client_id": "a"})["prompt_id"]
              for i in range(5)]
    running = server.wait_for(lambda: server.get("/queue")["queue_running"])[0]["prompt_id"]
    assert running == queued[0]
    server.kill()

    server.start()
    server.wait_for(lambda: set(statuses(server, queued).values()) == {"success"}, timeout=240)
    history = server.get("/history?max_items=1000")
    assert history[done]["status"]["status_str"] == "success"  # earlier history kept
    assert [m[0] for m in history[running]["status"]["messages"]].count("execution_interrupted") == 1
    assert all(name in os.listdir(sd_env.output_dir) for name in outputs_before)
    assert len(list(sd_env.output_dir.glob("txt2img_*.png"))) == 6
    numbers = [history[p]["number"] for p in queued]
    started = [history[p]["timings"]["started_at"] for p in queued]
    assert sorted(numbers) == numbers and sorted(started) == started  # still run in queue order
