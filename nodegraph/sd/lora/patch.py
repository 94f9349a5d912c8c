"""Patched views: a module that is its base but for the parameters LoRAs change ("a model is a value plus patches").

`patch_module(unet, adapters, strength)` returns a new module object of the same class. Only the modules on the
path to a changed parameter are copied (shallowly: new parameter and child tables, the same tensors); every other
module, parameter and buffer is the base's own object. The base is never touched, so the executor's cached
checkpoint stays as loaded, and a view costs the bytes of the weights it changes.

A view remembers its base and every (adapter, strength) applied to each parameter. Patching a view (stacking
LoRAs) recomputes a parameter from the base with all its adapters in order, in float32, and casts once, as ComfyUI
does; a parameter only an earlier LoRA changed is shared with the view below. A strength change is a new view
from the same base: nothing is undone or reloaded.

On the CPU the checkpoint's convolution weights (and bf16 linears) are packed into oneDNN's layout (layers.py).
A changed weight is read back from the packed base, patched, and packed again; no plain copy is kept.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import packed_weight
from .adapters import Adapter

RECORD = "lora_patches"  # the attribute of a view holding its PatchRecord


@dataclass(frozen=True)
class PatchRecord:
    base: nn.Module  # the unpatched module, as loaded
    patches: dict[str, tuple[tuple[Adapter, float], ...]]  # parameter name -> (adapter, strength), in order


def patch_record(module: nn.Module) -> PatchRecord | None:
    """How `module` was patched, or None for a module as loaded."""
    return module.__dict__.get(RECORD)


def unpatched(module: nn.Module) -> nn.Module:
    """The module as loaded under any number of patches."""
    record = patch_record(module)
    return module if record is None else record.base


@torch.no_grad()
def patch_module(module: nn.Module, adapters: dict[str, Adapter], strength: float) -> nn.Module:
    """A view of `module` (a loaded module or a view) with `adapters` (parameter name -> adapter) applied at
    `strength`. Strength 0 or no adapters: `module` itself, unchanged."""
    if strength == 0 or not adapters:
        return module
    record = patch_record(module)
    base = unpatched(module)
    earlier = record.patches if record is not None else {}
    patches = dict(earlier)
    for name, adapter in adapters.items():
        patches[name] = earlier.get(name, ()) + ((adapter, float(strength)),)
    current = dict(module.named_parameters())
    parameters = {name: patched_parameter(base, name, patches[name]) if name in adapters else current[name]
                  for name in patches}
    view = view_with(base, parameters)
    view.__dict__[RECORD] = PatchRecord(base, patches)
    return view


def patched_parameter(base: nn.Module, name: str, patches: tuple[tuple[Adapter, float], ...]) -> nn.Parameter:
    """Parameter `name` of `base` with `patches` applied: float32 arithmetic, cast to the parameter's dtype, in its
    layout (channels-last convolutions stay so; packed weights are packed again)."""
    module_path, _, attribute = name.rpartition(".")
    layer = base.get_submodule(module_path)
    original = getattr(layer, attribute)
    if original.is_mkldnn:  # unpacked straight into float32: one pass over the weight
        weight = original.to_dense(torch.float32)
    else:
        weight = original.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    for adapter, strength in patches:
        weight = adapter.apply(weight, strength)
    result = weight.to(original.dtype)
    del weight
    if original.is_mkldnn:
        result = packed_weight(layer, result)
    elif result.ndim == 4 and original.is_contiguous(memory_format=torch.channels_last):
        result = result.contiguous(memory_format=torch.channels_last)
    return nn.Parameter(result, requires_grad=False)


def view_with(base: nn.Module, parameters: dict[str, nn.Parameter]) -> nn.Module:
    """A copy of `base` sharing everything but `parameters` (name -> the new parameter): the modules on the way to
    each one are copied shallowly, all others are `base`'s own."""
    view = _shallow_copy(base)
    copies = {"": view}

    def copy_of(path: str) -> nn.Module:
        if path not in copies:
            parent_path, _, child = path.rpartition(".")
            parent = copy_of(parent_path)
            parent._modules[child] = copies[path] = _shallow_copy(parent._modules[child])
        return copies[path]

    for name, parameter in parameters.items():
        module_path, _, attribute = name.rpartition(".")
        copy_of(module_path)._parameters[attribute] = parameter
    return view


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object with the same attributes, and parameter, buffer and child tables of its own (hooks and
    other bookkeeping stay shared: views are for inference)."""
    clone = copy.copy(module)
    clone.__dict__.update(_parameters=dict(module._parameters), _buffers=dict(module._buffers),
                          _modules=dict(module._modules))
    clone.__dict__.pop(RECORD, None)
    return clone
