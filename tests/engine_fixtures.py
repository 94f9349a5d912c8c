"""Shared pieces of the engine tests: test-only nodes that count their runs, workflow builders, folders.

Test modules import the fixtures they use from here (pytest picks up fixtures imported into a test module).
"""

import copy
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import Field

from nodegraph.nodes import Environment, Link, Node, NodeInputs, NodeRegistry

CHECKPOINT_NAME = "tiny.safetensors"


# --- test-only nodes ----------------------------------------------------------------------------------------------


@dataclass
class CountingNodes:
    registry: NodeRegistry
    runs: Counter  # node id -> how many times it ran


def counting_nodes() -> CountingNodes:
    """A fresh registry of small nodes on NUMBER and BLOB sockets; each run is counted by node id."""
    runs = Counter()

    class Number(Node):
        OUTPUTS = {"number": "NUMBER"}

        class Inputs(NodeInputs):
            value: int = Field(0, ge=-1000, le=1000)

        def run(self, ctx, value):
            runs[ctx.node_id] += 1
            return {"number": value}

    class Add(Node):
        OUTPUTS = {"number": "NUMBER"}

        class Inputs(NodeInputs):
            a: Link["NUMBER"]
            b: Link["NUMBER"]

        def run(self, ctx, a, b):
            runs[ctx.node_id] += 1
            return {"number": a + b}

    class Steps(Node):
        """Passes a number through after `steps` reported steps (a stand-in for a sampler)."""

        OUTPUTS = {"number": "NUMBER"}

        class Inputs(NodeInputs):
            number: Link["NUMBER"]
            steps: int = Field(5, ge=1)

        def run(self, ctx, number, steps):
            runs[ctx.node_id] += 1
            for step in range(1, steps + 1):
                ctx.report_progress(step, steps)
            return {"number": number}

    class Explode(Node):
        OUTPUTS = {"number": "NUMBER"}

        class Inputs(NodeInputs):
            number: Link["NUMBER"]
            fail: bool = True

        def run(self, ctx, number, fail):
            runs[ctx.node_id] += 1
            if fail:
                raise RuntimeError("boom")
            return {"number": number}

    class Broken(Node):
        """Returns something other than its declared outputs."""

        OUTPUTS = {"number": "NUMBER"}

        class Inputs(NodeInputs):
            number: Link["NUMBER"]

        def run(self, ctx, number):
            runs[ctx.node_id] += 1
            return {"numbr": number}

    class Blob(Node):
        OUTPUTS = {"blob": "BLOB"}

        class Inputs(NodeInputs):
            size: int = Field(100, ge=1)
            tag: str = ""

        def run(self, ctx, size, tag):
            runs[ctx.node_id] += 1
            return {"blob": torch.zeros(size, dtype=torch.uint8)}

    class Measure(Node):
        OUTPUTS = {"number": "NUMBER"}

        class Inputs(NodeInputs):
            blob: Link["BLOB"]
            label: str = ""  # changing it makes this node run again, and so use its blob

        def run(self, ctx, blob, label):
            runs[ctx.node_id] += 1
            return {"number": blob.numel()}

    class Show(Node):
        OUTPUT_NODE = True

        class Inputs(NodeInputs):
            number: Link["NUMBER"]
            label: str = ""

        def run(self, ctx, number, label):
            runs[ctx.node_id] += 1
            return {"ui": {"value": number, "label": label}}

    registry = NodeRegistry([Number, Add, Steps, Explode, Broken, Blob, Measure, Show])
    return CountingNodes(registry, runs)


def node(type_name: str, **inputs) -> dict:
    return {"type": type_name, "inputs": inputs}


def workflow(**nodes) -> dict:
    return {"version": 1, "nodes": nodes}


# --- folders and the tiny checkpoint --------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path) -> Environment:
    """Empty folders of its own for every test; models on the CPU in fp32 so results do not depend on the machine."""
    return folders_env(tmp_path)


def folders_env(root: Path, checkpoint: Path | None = None) -> Environment:
    """Empty models/checkpoints, input, output and temp folders under `root` (with `checkpoint` installed as
    CHECKPOINT_NAME when given), models on the CPU in fp32."""
    for name in ("models/checkpoints", "input", "output", "temp"):
        (root / name).mkdir(parents=True)
    env = Environment(models_dir=root / "models", input_dir=root / "input", output_dir=root / "output",
                      temp_dir=root / "temp", device="cpu", dtype="fp32")
    if checkpoint is not None:
        install_checkpoint(checkpoint, env)
    return env


@pytest.fixture
def sd_env(env, tiny_checkpoint) -> Environment:
    """`env` with the tiny random checkpoint in its checkpoints folder as CHECKPOINT_NAME."""
    install_checkpoint(tiny_checkpoint, env)
    return env


def install_checkpoint(source: Path, env: Environment, name: str = CHECKPOINT_NAME) -> Path:
    """Hard-link (or copy) a checkpoint into the env's folder: a symlink would point outside it, which is refused."""
    target = env.checkpoints_dir / name
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def all_files(folder: Path) -> list[Path]:
    return sorted(path for path in Path(folder).rglob("*") if path.is_file())


def txt2img(seed: int = 42, prompt: str = "a red circle", negative: str = "", steps: int = 2, size: int = 64,
            checkpoint: str = CHECKPOINT_NAME, prefix: str = "txt2img") -> dict:
    """The shape of workflows/txt2img.json, small enough for tests."""
    return workflow(
        ckpt=node("LoadCheckpoint", name=checkpoint),
        pos=node("CLIPEncode", clip=["ckpt", "clip"], text=prompt),
        neg=node("CLIPEncode", clip=["ckpt", "clip"], text=negative),
        empty=node("EmptyLatent", width=size, height=size, batch_size=1),
        sample=node("DDPMSample", model=["ckpt", "model"], positive=["pos", "conditioning"],
                    negative=["neg", "conditioning"], latent=["empty", "latent"], seed=seed, steps=steps, cfg=7.5,
                    denoise=1.0),
        decode=node("VAEDecode", vae=["ckpt", "vae"], latent=["sample", "latent"]),
        save=node("SaveImage", images=["decode", "image"], prefix=prefix),
    )


def img2img(image: str = "example.png", denoise: float = 0.6, seed: int = 42, steps: int = 4,
            checkpoint: str = CHECKPOINT_NAME, prefix: str = "img2img") -> dict:
    """The shape of workflows/img2img.json, small enough for tests."""
    flow = copy.deepcopy(txt2img(seed=seed, steps=steps, checkpoint=checkpoint, prefix=prefix))
    del flow["nodes"]["empty"]
    flow["nodes"]["image"] = node("LoadImage", name=image)
    flow["nodes"]["encode"] = node("VAEEncode", vae=["ckpt", "vae"], image=["image", "image"])
    flow["nodes"]["sample"]["inputs"].update(latent=["encode", "latent"], denoise=denoise)
    return flow


def with_ksampler(flow: dict, sampler_name: str = "euler", scheduler: str = "normal", **settings) -> dict:
    """`flow` (txt2img or img2img) sampling with ComfyUI's KSampler instead of DDPMSample, same seed/steps/denoise."""
    flow = copy.deepcopy(flow)
    old = flow["nodes"]["sample"]["inputs"]
    inputs = dict(model=old["model"], seed=old["seed"], steps=old["steps"], cfg=old["cfg"], sampler_name=sampler_name,
                  scheduler=scheduler, positive=old["positive"], negative=old["negative"], latent_image=old["latent"],
                  denoise=old["denoise"])
    flow["nodes"]["sample"] = node("KSampler", **(inputs | settings))
    flow["nodes"]["decode"]["inputs"]["latent"] = ["sample", "LATENT"]
    return flow


def two_stage_advanced(flow: dict, steps: int = 20, split: int = 12, sampler_name: str = "euler") -> dict:
    """`flow` sampled by two KSamplerAdvanced: steps 0..split keeping the leftover noise, then split..steps adding
    none (ComfyUI's base + refiner pattern)."""
    flow = copy.deepcopy(with_ksampler(flow, sampler_name))
    first = flow["nodes"]["sample"]["inputs"]
    common = dict(model=first["model"], noise_seed=first["seed"], steps=steps, cfg=first["cfg"],
                  sampler_name=sampler_name, scheduler=first["scheduler"], positive=first["positive"],
                  negative=first["negative"])
    flow["nodes"]["sample"] = node("KSamplerAdvanced", add_noise="enable", **common, latent_image=first["latent_image"],
                                   start_at_step=0, end_at_step=split, return_with_leftover_noise="enable")
    flow["nodes"]["finish"] = node("KSamplerAdvanced", add_noise="disable", **common, latent_image=["sample", "LATENT"],
                                   start_at_step=split, end_at_step=10000, return_with_leftover_noise="disable")
    flow["nodes"]["decode"]["inputs"]["latent"] = ["finish", "LATENT"]
    return flow
