"""Matching a LoRA file's entries to the layers of a loaded model: which adapter changes which parameter.

Keys that name no layer of the model are collected (the caller reports them: ComfyUI only logs them), never
dropped silently. A file made for another model is refused with what gives it away: keys of a second text encoder
(SDXL), factors whose shapes do not fit our layers (SDXL, SD 2.x: other widths and context sizes), or no key that
names any of our layers at all.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import Adapter, read_adapters, split_key
from .file import LoraError
from .keys import SECOND_TEXT_ENCODER, text_encoder_lora_names, unet_lora_names

SHOWN = 8  # how many offending keys a message lists


@dataclass(frozen=True)
class LoraPatches:
    """A LoRA file matched to one model: adapters by the parameter they change, per part."""

    path: str
    unet: dict[str, Adapter] = field(default_factory=dict)  # "input_blocks.1.1...attn1.to_q.weight" -> adapter
    text_encoder: dict[str, Adapter] = field(default_factory=dict)
    unmatched: tuple[str, ...] = ()  # file keys that change nothing in this model

    def describe_unmatched(self, shown: int = SHOWN) -> str:
        listed = ", ".join(self.unmatched[:shown])
        more = f" and {len(self.unmatched) - shown} more" if len(self.unmatched) > shown else ""
        return f"{len(self.unmatched)} key(s) of {self.path} match no layer of this model and were not applied: {listed}{more}"


def match_lora(path, tensors: dict[str, torch.Tensor], unet: nn.Module | None = None,
               text_encoder: nn.Module | None = None) -> LoraPatches:
    """Match `tensors` (a LoRA file's) to the parameters of `unet` and `text_encoder` (either may be None: its keys
    then count as unmatched). Raises LoraError for a file that does not fit the model."""
    second_encoder = sorted(key for key in tensors if key.startswith(SECOND_TEXT_ENCODER))
    if second_encoder:
        raise LoraError(path, f"{len(second_encoder)} key(s) are for a second text encoder, which SD 1.x models do "
                              f"not have (an SDXL LoRA?): {', '.join(second_encoder[:3])}")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unmatched = []
    for key, tensor in tensors.items():
        split = split_key(key)
        if split is None:
            unmatched.append(key)
        else:
            groups.setdefault(split[0], {})[split[1]] = tensor

    parts = {"unet": unet, "text_encoder": text_encoder}
    names = {}  # base name -> (part, module path)
    for part, module in parts.items():
        if module is not None:
            table = unet_lora_names(module) if part == "unet" else text_encoder_lora_names(module)
            names.update({base: (part, layer) for base, layer in table.items()})
    parameters = {part: dict(module.named_parameters()) for part, module in parts.items() if module is not None}

    found = {"unet": {}, "text_encoder": {}}
    misfits, sources = [], {}
    for base, suffixes in groups.items():
        target = names.get(base)
        if target is None:
            unmatched.extend(base + suffix for suffix in suffixes)
            continue
        part, module_path = target
        adapters, unused = read_adapters(path, base, suffixes)
        unmatched.extend(base + suffix for suffix in unused)
        for attribute, adapter in adapters.items():
            name = f"{module_path}.{attribute}"
            parameter = parameters[part].get(name)
            if parameter is None:
                unmatched.extend(adapter.keys)
                continue
            try:
                problem = adapter.fits(parameter.shape)
            except ValueError as error:
                raise LoraError(path, f"{base}: {error}") from error
            if problem is not None:
                misfits.append(f"{base} {problem}")
                continue
            if (part, name) in sources:
                raise LoraError(path, f"{base} and {sources[part, name]} both change {name}; a layer takes one adapter")
            sources[part, name] = base
            found[part][name] = adapter
    if misfits:
        more = f" and {len(misfits) - SHOWN} more" if len(misfits) > SHOWN else ""
        raise LoraError(path, f"{len(misfits)} layer(s) do not fit this SD 1.x model, so the LoRA was made for another "
                              f"model (SDXL, SD 2.x, ...): {'; '.join(misfits[:SHOWN])}{more}")
    if not found["unet"] and not found["text_encoder"]:
        raise LoraError(path, f"none of its {len(tensors)} keys names a layer of this SD 1.x model, so it is not a "
                              f"LoRA for it (keys like {', '.join(sorted(tensors)[:3])})")
    return LoraPatches(str(path), found["unet"], found["text_encoder"], tuple(sorted(unmatched)))
