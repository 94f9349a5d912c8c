"""Loading models by name from their folders (nodegraph.model_folders): checkpoints and standalone VAEs.

Our LoadCheckpoint and ComfyUI's CheckpointLoaderSimple are two declarations of one loader: same files offered,
same function, same object out (the loaded checkpoint, under MODEL, CLIP and VAE alike).
"""

from pathlib import Path
from typing import Annotated

from pydantic import Field

from nodegraph.model_folders import PACKAGED_MODELS, describe_roots, list_models, model_path
from nodegraph.nodes import Choices, Environment, Node, NodeInputs, RunContext
from nodegraph.paths import file_fingerprint
from nodegraph.sd import load_checkpoint
from nodegraph.sd.checkpoint import load_vae

# The checkpoints that ship with the package (offered beside the user's, which win on a name clash).
BUILTIN_CHECKPOINTS: dict[str, Path] = PACKAGED_MODELS["checkpoints"]


def checkpoint_names(env: Environment) -> list[str]:
    return list_models(env, "checkpoints")


def checkpoint_path(env: Environment, name: str) -> Path:
    return model_path(env, "checkpoints", name)


def vae_names(env: Environment) -> list[str]:
    return list_models(env, "vae")


CHECKPOINT_CHOICES = Choices(checkpoint_names, lambda env: describe_roots(env, "checkpoints"))
VAE_CHOICES = Choices(vae_names, lambda env: describe_roots(env, "vae"))


def placed_file(env: Environment, kind: str, name: str) -> dict:
    """A loader's cache fingerprint: the file (a replaced file or re-pointed link is loaded again) and where it is
    placed (a run with another --device/--dtype must not reuse it)."""
    return {"file": file_fingerprint(model_path(env, kind, name)), "device": env.device, "dtype": env.dtype}


def load_checkpoint_named(env: Environment, name: str):
    """The one checkpoint loader behind LoadCheckpoint and CheckpointLoaderSimple."""
    return load_checkpoint(checkpoint_path(env, name), device=env.device, dtype=env.dtype,
                           allow_pickle=env.allow_pickled_models)


class LoadCheckpoint(Node):
    NATIVE = True
    CATEGORY = "loaders"
    DESCRIPTION = "Load a Stable Diffusion 1.x checkpoint (.safetensors in the checkpoints folders)."
    OUTPUTS = {"model": "MODEL", "clip": "CLIP", "vae": "VAE"}

    class Inputs(NodeInputs):
        name: Annotated[str, CHECKPOINT_CHOICES] = Field(description="checkpoint file name")

    @classmethod
    def fingerprint(cls, env, constants):
        return placed_file(env, "checkpoints", constants["name"])

    def run(self, ctx: RunContext, name):
        sd = load_checkpoint_named(ctx.env, name)
        return {"model": sd, "clip": sd, "vae": sd}


class CheckpointLoaderSimple(Node):
    DISPLAY_NAME = "Load Checkpoint"
    CATEGORY = "loaders"
    DESCRIPTION = "Loads a diffusion model checkpoint (its denoising model, text encoder and VAE)."
    OUTPUTS = {"MODEL": "MODEL", "CLIP": "CLIP", "VAE": "VAE"}

    class Inputs(NodeInputs):
        ckpt_name: Annotated[str, CHECKPOINT_CHOICES] = Field(description="checkpoint file, from a checkpoints folder")

    @classmethod
    def fingerprint(cls, env, constants):
        return placed_file(env, "checkpoints", constants["ckpt_name"])

    def run(self, ctx: RunContext, ckpt_name):
        sd = load_checkpoint_named(ctx.env, ckpt_name)
        return {"MODEL": sd, "CLIP": sd, "VAE": sd}


class VAELoader(Node):
    DISPLAY_NAME = "Load VAE"
    CATEGORY = "loaders"
    DESCRIPTION = ("Load a standalone SD 1.x VAE file from the vae folders (e.g. vae-ft-mse-840000-ema-pruned); "
                   "its VAE output replaces a checkpoint's in VAEDecode and VAEEncode.")
    OUTPUTS = {"VAE": "VAE"}

    class Inputs(NodeInputs):
        vae_name: Annotated[str, VAE_CHOICES] = Field(description="VAE file, from a vae folder")

    @classmethod
    def fingerprint(cls, env, constants):
        return placed_file(env, "vae", constants["vae_name"])

    def run(self, ctx: RunContext, vae_name):
        vae = load_vae(model_path(ctx.env, "vae", vae_name), device=ctx.env.device, dtype=ctx.env.dtype,
                       allow_pickle=ctx.env.allow_pickled_models)
        return {"VAE": vae}


NODES = [LoadCheckpoint, CheckpointLoaderSimple, VAELoader]
