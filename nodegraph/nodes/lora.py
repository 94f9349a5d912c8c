"""ComfyUI's LoRA loaders: LoraLoader (the model and its text encoder) and LoraLoaderModelOnly.

Both return patched views (nodegraph.sd.lora.patch): the incoming model stays as it was (the cached checkpoint is
never changed), and the view shares every tensor the LoRA does not change. Chained loaders stack. A strength of 0
passes the input through unchanged, as ComfyUI does. A LoRA file is read once and kept (LOADED, by file
fingerprint), so a strength change re-patches from the model without reading the file again.
"""

import dataclasses
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field

from nodegraph.model_folders import describe_roots, list_models, model_path
from nodegraph.nodes import Choices, Environment, Link, Node, NodeInputs, RunContext
from nodegraph.paths import file_fingerprint
from nodegraph.sd.lora import match_lora, patch_module, read_lora_file

LORA_CHOICES = Choices(lambda env: list_models(env, "loras"), lambda env: describe_roots(env, "loras"))
STRENGTH = {"ge": -100.0, "le": 100.0, "json_schema_extra": {"step": 0.01}}  # ComfyUI's bounds and widget step


class LoadedLoras:
    """The last few LoRA files read, by file fingerprint (a replaced file is read again)."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._files: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # files actually read since the last clear (for tests and benchmarks)

    def get(self, path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
        key = (*file_fingerprint(path), allow_pickle)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        tensors = read_lora_file(path, allow_pickle)
        with self._lock:
            self.reads += 1
            self._files[key] = tensors
            while len(self._files) > self.keep:
                self._files.popitem(last=False)
        return tensors

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            self.reads = 0


LOADED = LoadedLoras()


def lora_fingerprint(env: Environment, lora_name: str) -> dict:
    return {"file": file_fingerprint(model_path(env, "loras", lora_name))}


def apply_lora(ctx: RunContext, model, clip, lora_name: str, strength_model: float, strength_clip: float):
    """(model, clip) with the LoRA applied; `clip` None for a model-only loader (its text-encoder keys are then
    known but not applied). Each of the model's text encoders (SDXL: clip_l and clip_g) gets its own adapters. The
    one implementation behind both nodes."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    path = model_path(ctx.env, "loras", lora_name)
    tensors = LOADED.get(path, ctx.env.allow_pickled_models)
    patches = match_lora(path, tensors, model.unet, (clip or model).text_encoders, family=model.family.name)
    if patches.unmatched:
        ctx.warn(patches.describe_unmatched())
    if strength_model != 0 and not patches.unet:
        ctx.warn(f"{lora_name} has no weights for the diffusion model: strength_model changes nothing")
    if clip is not None and strength_clip != 0 and not any(patches.text_encoders.values()):
        ctx.warn(f"{lora_name} has no weights for the text encoder: strength_clip changes nothing")
    if patches.unet and strength_model != 0:
        model = dataclasses.replace(model, unet=patch_module(model.unet, patches.unet, strength_model))
    if clip is not None and strength_clip != 0:
        for name, adapters in patches.text_encoders.items():
            if adapters:
                clip = clip.with_text_encoder(patch_module(clip.text_encoders[name], adapters, strength_clip), name)
    return model, clip


class LoraLoader(Node):
    DISPLAY_NAME = "Load LoRA"
    CATEGORY = "loaders"
    DESCRIPTION = ("LoRAs modify the diffusion model and its text encoder, e.g. to add a style or a subject. Several "
                   "LoRA loaders can be chained. Formats: kohya (LDM or diffusers names; SDXL's lora_te1_/lora_te2_), "
                   "LoCon, LoHa, LoKr, DoRA, diffusers/peft; for SD 1.x, SD 2.x, SDXL and its refiner.")
    OUTPUTS = {"MODEL": "MODEL", "CLIP": "CLIP"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the diffusion model the LoRA is applied to")
        clip: Link["CLIP"] = Field(description="the text encoder the LoRA is applied to")
        lora_name: Annotated[str, LORA_CHOICES] = Field(description="LoRA file, from a loras folder")
        strength_model: float = Field(1.0, description="how strongly to change the diffusion model (may be negative)",
                                      **STRENGTH)
        strength_clip: float = Field(1.0, description="how strongly to change the text encoder (may be negative)",
                                     **STRENGTH)

    @classmethod
    def fingerprint(cls, env, constants):
        return lora_fingerprint(env, constants["lora_name"])

    def run(self, ctx: RunContext, model, clip, lora_name, strength_model, strength_clip):
        model, clip = apply_lora(ctx, model, clip, lora_name, strength_model, strength_clip)
        return {"MODEL": model, "CLIP": clip}


class LoraLoaderModelOnly(Node):
    CATEGORY = "loaders"
    DESCRIPTION = "A LoRA applied to the diffusion model only (its text-encoder weights, if any, are left out)."
    OUTPUTS = {"MODEL": "MODEL"}

    class Inputs(NodeInputs):
        model: Link["MODEL"] = Field(description="the diffusion model the LoRA is applied to")
        lora_name: Annotated[str, LORA_CHOICES] = Field(description="LoRA file, from a loras folder")
        strength_model: float = Field(1.0, description="how strongly to change the diffusion model (may be negative)",
                                      **STRENGTH)

    @classmethod
    def fingerprint(cls, env, constants):
        return lora_fingerprint(env, constants["lora_name"])

    def run(self, ctx: RunContext, model, lora_name, strength_model):
        model, _ = apply_lora(ctx, model, None, lora_name, strength_model, 0.0)
        return {"MODEL": model}


NODES = [LoraLoader, LoraLoaderModelOnly]
