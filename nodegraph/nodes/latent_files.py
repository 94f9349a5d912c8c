"""Latents as files: SaveLatent writes ComfyUI's .latent files into the output folder, LoadLatent reads them from
the input folder.

A .latent file is safetensors: the latents under "latent_tensor" (raw VAE space, float32 as we hold them) and an
empty "latent_format_version_0" tensor that marks them as unscaled; files without the marker come from ComfyUI's
first format, which stored latents multiplied by SD's latent scale, and are divided by it on load. The header's
metadata carries the workflow as ComfyUI stores it: "prompt" (the API-format prompt as JSON, "" without one) and one
JSON entry per extra_pnginfo key (e.g. "workflow"). safetensors holds tensors only, so loading never runs code.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import safetensors
import torch
from pydantic import Field, field_validator
from safetensors.torch import load_file, save

from nodegraph.nodes import Choices, Environment, Latent, Link, Node, NodeInputs, RunContext
from nodegraph.nodes.image import check_prefix
from nodegraph.nodes.image_files import expand_prefix, image_refs, next_counter
from nodegraph.nodes.latent import LATENT_CHANNELS
from nodegraph.paths import check_relative_name, confine, file_fingerprint, list_files

LATENT_SUFFIX = ".latent"
LATENT_KEY = "latent_tensor"
FORMAT_MARKER = "latent_format_version_0"
OLD_FORMAT_SCALE = 0.18215  # the first format stored latents scaled by SD 1.x's latent scale


def latent_file_bytes(samples: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """A .latent file's content, in ComfyUI's layout."""
    tensors = {LATENT_KEY: samples.detach().float().cpu().contiguous(), FORMAT_MARKER: torch.tensor([])}
    return save(tensors, metadata=metadata)


def comfy_metadata(prompt: dict | None, extra_pnginfo: dict | None) -> dict[str, str]:
    """What ComfyUI writes into a saved file's metadata: the prompt and each extra_pnginfo entry, as JSON text."""
    metadata = {"prompt": json.dumps(prompt) if prompt else ""}
    for key, value in (extra_pnginfo or {}).items():
        metadata[key] = json.dumps(value)
    return metadata


def write_numbered(folder: Path, prefix: str, suffix: str, content: bytes) -> Path:
    """Write `content` to `<prefix>_NNNNN_<suffix>` in `folder`, numbered on as ComfyUI numbers saved files (across
    file types). The file appears whole or not at all: it is written under a hidden temporary name and then linked
    to its final name, which never replaces an existing file."""
    relative = check_relative_name(prefix)
    target = confine(folder, str(relative) + "_00001_" + suffix)  # sub-folders allowed, nothing outside `folder`
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.name[: -len("_00001_" + suffix)]
    counter = next_counter(target.parent, stem)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{stem}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        while True:
            path = target.parent / f"{stem}_{counter:05d}_{suffix}"
            try:
                os.link(temporary, path)  # atomic, and fails rather than overwrite (two runs saving at once)
                return path
            except FileExistsError:
                counter += 1
    finally:
        os.unlink(temporary)


class SaveLatent(Node):
    DISPLAY_NAME = "Save Latent"
    CATEGORY = "_for_testing"
    DESCRIPTION = ("Save latents as a ComfyUI .latent file in the output folder (with the prompt and workflow in its "
                   "metadata), to load later with LoadLatent from the input folder.")
    OUTPUT_NODE = True
    OUTPUTS = {}

    class Inputs(NodeInputs):
        samples: Link["LATENT"] = Field(description="the latents to save")
        filename_prefix: str = Field("latents/ComfyUI", validate_default=True,  # its folder could be a link out
                                     description="file name prefix; may start with sub-folders of the output folder")

        _stays_in_output_folder = field_validator("filename_prefix")(check_prefix)

    def run(self, ctx: RunContext, samples, filename_prefix):
        content = latent_file_bytes(samples.samples, comfy_metadata(ctx.prompt, ctx.extra_pnginfo))
        prefix = expand_prefix(filename_prefix, width=0, height=0)  # ComfyUI knows no picture size for latents
        path = write_numbered(ctx.env.output_dir, prefix, LATENT_SUFFIX, content)
        return {"ui": {"latents": image_refs([path], ctx.env.output_dir, "output")}}


def latent_file_names(env: Environment) -> list[str]:
    return list_files(env.input_dir, (LATENT_SUFFIX,))


class LoadLatent(Node):
    DISPLAY_NAME = "Load Latent"
    CATEGORY = "_for_testing"
    DESCRIPTION = "Load latents from a .latent file (ComfyUI's, or SaveLatent's moved there) in the input folder."
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        latent: Annotated[str, Choices(latent_file_names, lambda env: env.input_dir)] = Field(
            description=".latent file name in the input folder")

    @classmethod
    def fingerprint(cls, env, constants):
        return file_fingerprint(confine(env.input_dir, constants["latent"]))

    def run(self, ctx: RunContext, latent):
        return {"LATENT": read_latent_file(confine(ctx.env.input_dir, latent))}


def read_latent_file(path: Path) -> Latent:
    """A .latent file's latents, in raw VAE space whichever format wrote them."""
    try:
        tensors = load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path.name} is not a readable .latent file (safetensors): {error}") from error
    if LATENT_KEY not in tensors:
        raise ValueError(f"{path.name} has no {LATENT_KEY!r} tensor (it has {sorted(tensors)}): not a .latent file")
    samples = tensors[LATENT_KEY].float()
    if samples.ndim != 4 or samples.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"{path.name} holds latents of shape {list(samples.shape)}; expected "
                         f"[batch, {LATENT_CHANNELS}, height, width] (SD 1.x latents)")
    if FORMAT_MARKER not in tensors:
        samples = samples * (1.0 / OLD_FORMAT_SCALE)
    return Latent(samples.contiguous())


NODES = [SaveLatent, LoadLatent]
