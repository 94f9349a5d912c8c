"""Loading checkpoints and input images by name, each confined to its folder."""

from pathlib import Path
from typing import Annotated

from PIL import Image, ImageOps
from pydantic import Field

from nodegraph.nodes import Choices, Environment, Node, NodeInputs, RunContext
from nodegraph.nodes.image import to_tensor
from nodegraph.paths import confine, list_files
from nodegraph.sd import load_checkpoint

CHECKPOINT_SUFFIXES = (".safetensors",)  # pickled .ckpt files can run code when loaded: not offered
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

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


def input_image_names(env: Environment) -> list[str]:
    return list_files(env.input_dir, IMAGE_SUFFIXES)


def file_fingerprint(path: Path) -> list:
    """What tells a changed file from the one already loaded: resolved path, size, modification time."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


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


class LoadImage(Node):
    COMFY_TYPE = None  # ComfyUI's LoadImage takes (image) and gives IMAGE and MASK: see ComfyUI.LoadImage
    CATEGORY = "image"
    DESCRIPTION = ("Load an image from the input folder as RGB (transparency is dropped; EXIF rotation applied). "
                   "For img2img, VAEEncode crops sides that are not multiples of 8.")
    OUTPUTS = {"image": "IMAGE"}

    class Inputs(NodeInputs):
        name: Annotated[str, Choices(input_image_names, lambda env: env.input_dir)] = Field(
            description="image file name in the input folder")

    @classmethod
    def fingerprint(cls, env, constants):
        return file_fingerprint(confine(env.input_dir, constants["name"]))

    def run(self, ctx: RunContext, name):
        with Image.open(confine(ctx.env.input_dir, name)) as image:
            return {"image": to_tensor(ImageOps.exif_transpose(image))}


NODES = [LoadCheckpoint, LoadImage]
