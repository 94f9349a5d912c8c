"""Loading models by name, each confined to its folder."""

from pathlib import Path
from typing import Annotated

from pydantic import Field

from nodegraph.nodes import Choices, Environment, Node, NodeInputs, RunContext
from nodegraph.paths import confine, file_fingerprint, list_files
from nodegraph.sd import load_checkpoint

CHECKPOINT_SUFFIXES = (".safetensors",)  # pickled .ckpt files can run code when loaded: not offered

# Checkpoints that ship with the package, by name: listed beside the user's files (which win on a name clash).
PACKAGED_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
BUILTIN_CHECKPOINTS: dict[str, Path] = {"demo-shapes.safetensors": PACKAGED_CHECKPOINTS / "demo-shapes.safetensors"}


def checkpoint_names(env: Environment) -> list[str]:
    builtin = {name for name, path in BUILTIN_CHECKPOINTS.items() if path.is_file()}
    return sorted(builtin | set(list_files(env.checkpoints_dir, CHECKPOINT_SUFFIXES)))


def checkpoint_path(env: Environment, name: str) -> Path:
    path = confine(env.checkpoints_dir, name)
    if not path.is_file() and name in BUILTIN_CHECKPOINTS:
        return BUILTIN_CHECKPOINTS[name]
    return path


class LoadCheckpoint(Node):
    CATEGORY = "loaders"
    DESCRIPTION = "Load a Stable Diffusion 1.x checkpoint (.safetensors in <models>/checkpoints)."
    OUTPUTS = {"model": "MODEL", "clip": "CLIP", "vae": "VAE"}

    class Inputs(NodeInputs):
        name: Annotated[str, Choices(checkpoint_names, lambda env: env.checkpoints_dir)] = Field(
            description="checkpoint file name")

    @classmethod
    def fingerprint(cls, env, constants):
        # The placement is part of what is loaded: a run with another --device/--dtype must not reuse this one.
        return {"file": file_fingerprint(checkpoint_path(env, constants["name"])),
                "device": env.device, "dtype": env.dtype}

    def run(self, ctx: RunContext, name):
        sd = load_checkpoint(checkpoint_path(ctx.env, name), device=ctx.env.device, dtype=ctx.env.dtype)
        return {"model": sd, "clip": sd, "vae": sd}


NODES = [LoadCheckpoint]
