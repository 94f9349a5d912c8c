"""Matching a LoRA file's entries to the layers of a loaded model: which adapter changes which parameter.

The model is its UNet and its text encoders by ComfyUI's names (clip_l; clip_h for SD 2.x; clip_l and clip_g for
SDXL; clip_g for the refiner). Keys that name no layer of the model are collected (the caller reports them: ComfyUI
only logs them), never dropped silently. A file made for another model is refused with what gives it away: keys of
a text encoder the model lacks (an SDXL LoRA's second encoder on SD 1.x), factors whose shapes do not fit our
layers (other widths and context sizes), or no key that names any of our layers at all.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import Adapter, Joined, Placed, read_adapters, split_key
from .file import LoraError
from .keys import Target, layer, missing_text_encoder_prefixes, text_encoder_lora_names, unet_lora_names

SHOWN = 8  # how many offending keys a message lists
# The family a set of text encoders gives away, for messages (the caller may say it outright).
FAMILY_BY_ENCODERS = {("clip_l",): "SD 1.x", ("clip_h",): "SD 2.x", ("clip_l", "clip_g"): "SDXL",
                      ("clip_g",): "SDXL refiner"}


@dataclass(frozen=True)
class LoraPatches:
    """A LoRA file matched to one model: adapters by the parameter they change, for the UNet and per text encoder
    (every encoder of the model has an entry, in the model's order; empty when the file has nothing for it)."""

    path: str
    unet: dict[str, Adapter] = field(default_factory=dict)  # "input_blocks.1.1...attn1.to_q.weight" -> adapter
    text_encoders: dict[str, dict[str, Adapter]] = field(default_factory=dict)  # "clip_g" -> {parameter: adapter}
    unmatched: tuple[str, ...] = ()  # file keys that change nothing in this model

    @property
    def text_encoder(self) -> dict[str, Adapter]:
        """The first text encoder's adapters (the only one's, but for SDXL: CLIP-L's)."""
        return next(iter(self.text_encoders.values()), {})

    def describe_unmatched(self, shown: int = SHOWN) -> str:
        listed = ", ".join(self.unmatched[:shown])
        more = f" and {len(self.unmatched) - shown} more" if len(self.unmatched) > shown else ""
        return f"{len(self.unmatched)} key(s) of {self.path} match no layer of this model and were not applied: {listed}{more}"


def encoders_by_name(text_encoders) -> dict[str, nn.Module]:
    """A bare module is an SD 1.x caller's text encoder: CLIP-L."""
    if text_encoders is None:
        return {}
    if isinstance(text_encoders, nn.Module):
        return {"clip_l": text_encoders}
    return dict(text_encoders)


def match_lora(path, tensors: dict[str, torch.Tensor], unet: nn.Module | None = None,
               text_encoders: Mapping[str, nn.Module] | nn.Module | None = None, *,
               text_encoder: nn.Module | None = None, family: str | None = None) -> LoraPatches:
    """Match `tensors` (a LoRA file's) to the parameters of `unet` and of `text_encoders` (the model's, by name; a
    single module, or `text_encoder=`, is SD 1.x's CLIP-L). Either may be None: its keys then count as unmatched
    (and keys of an encoder the model lacks are not told apart). `family` names the model in messages (else the
    encoders tell it). Raises LoraError for a file that does not fit the model."""
    encoders = encoders_by_name(text_encoders if text_encoders is not None else text_encoder)
    names = tuple(encoders)
    model = f"this {family or FAMILY_BY_ENCODERS.get(names, 'SD')} model"
    if encoders:
        for prefix, lacked in missing_text_encoder_prefixes(names).items():
            keys = sorted(key for key in tensors if key.startswith(prefix))
            if keys:
                hint = " (an SDXL LoRA?)" if lacked == "a second text encoder" else ""
                raise LoraError(path, f"{len(keys)} key(s) are for {lacked}, which {model} does not have{hint}: "
                                      f"{', '.join(keys[:3])}")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unmatched = []
    for key, tensor in tensors.items():
        split = split_key(key)
        if split is None:
            unmatched.append(key)
        else:
            groups.setdefault(split[0], {})[split[1]] = tensor

    modules = {"unet": unet, **encoders} if unet is not None else dict(encoders)
    targets: dict[str, tuple[str, Target]] = {}  # base name -> (part, target)
    if unet is not None:
        targets.update({base: ("unet", layer(path)) for base, path in unet_lora_names(unet).items()})
    for name, encoder in encoders.items():
        targets.update({base: (name, target) for base, target in text_encoder_lora_names(encoder, name, names).items()})
    parameters = {part: dict(module.named_parameters()) for part, module in modules.items()}

    placed: dict[tuple[str, str], list[tuple[str, Adapter]]] = {}  # (part, parameter) -> [(base, adapter)]
    misfits = []
    for base, suffixes in groups.items():
        if base not in targets:
            unmatched.extend(base + suffix for suffix in suffixes)
            continue
        part, target = targets[base]
        adapters, unused = read_adapters(path, base, suffixes)
        unmatched.extend(base + suffix for suffix in unused)
        for attribute, adapter in adapters.items():
            name = target.parameter(attribute)
            parameter = parameters[part].get(name) if name is not None else None
            if parameter is None:
                unmatched.extend(adapter.keys)
                continue
            if target.rows is not None or target.transposed:
                adapter = Placed(adapter.keys, adapter, target.rows, target.transposed)
            try:
                problem = adapter.fits(parameter.shape)
            except ValueError as error:
                raise LoraError(path, f"{base}: {error}") from error
            if problem is not None:
                misfits.append(f"{base} {problem}")
                continue
            placed.setdefault((part, name), []).append((base, adapter))
    if misfits:
        more = f" and {len(misfits) - SHOWN} more" if len(misfits) > SHOWN else ""
        raise LoraError(path, f"{len(misfits)} layer(s) do not fit {model}, so the LoRA was made for another "
                              f"model (SD 1.x, SD 2.x, SDXL, ...): {'; '.join(misfits[:SHOWN])}{more}")
    found = {part: {} for part in ("unet", *encoders)}
    for (part, name), adapters in placed.items():
        found[part][name] = _one_adapter(path, name, adapters)
    if not any(found.values()):
        raise LoraError(path, f"none of its {len(tensors)} keys names a layer of {model}, so it is not a LoRA for "
                              f"it (keys like {', '.join(sorted(tensors)[:3])})")
    return LoraPatches(str(path), found["unet"], {name: found[name] for name in encoders}, tuple(sorted(unmatched)))


def _one_adapter(path, name: str, adapters: list[tuple[str, Adapter]]) -> Adapter:
    """The adapter of one parameter: a file's one entry for it, or its entries for disjoint row blocks (q, k, v of a
    fused projection) joined. Two entries for the same rows (or one for all of them) contradict each other."""
    if len(adapters) == 1:
        return adapters[0][1]

    def clash(first: str, second: str) -> LoraError:
        return LoraError(path, f"{first} and {second} both change {name}; a layer takes one adapter")

    whole = next((base for base, adapter in adapters if not isinstance(adapter, Placed) or adapter.rows is None), None)
    if whole is not None:
        raise clash(whole, next(base for base, _ in adapters if base != whole))
    blocks = sorted((adapter.rows, base) for base, adapter in adapters)
    for (rows, base), (next_rows, next_base) in zip(blocks, blocks[1:]):
        if next_rows[0] < rows[1]:
            raise clash(base, next_base)
    parts = tuple(adapter for _, adapter in adapters)
    return Joined(tuple(key for part in parts for key in part.keys), parts=parts)
