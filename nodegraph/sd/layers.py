"""Layers whose CPU inference runs from weights packed once into oneDNN's own blocked layout.

A plain weight is reordered into that layout on every call. At SD's deep, low-resolution levels (1280 to 2560
channels at 8x8 or 16x16 latent cells) the reorder takes as long as the arithmetic, so packing once at load makes
those convolutions up to 2.5x faster; at full resolution it changes little. bf16 linears gain 5-15%. Results are
bit-identical: the same oneDNN algorithm runs, minus the reorder."""

import ctypes
import ctypes.util
import functools

import torch
from torch import nn


class Conv2d(nn.Conv2d):
    """nn.Conv2d that runs from a packed weight once it has one (`load_checkpoint` on the CPU, or `pack_weights`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_mkldnn:
            return torch.ops.mkldnn._convolution_pointwise(
                x.contiguous(memory_format=torch.channels_last), self.weight, self.bias, list(self.padding),
                list(self.stride), list(self.dilation), self.groups, "none", [], "")
        return super().forward(x)


class Linear(nn.Linear):
    """nn.Linear that runs from a packed weight once it has one (`load_checkpoint` on the CPU, or `pack_weights`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_mkldnn:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")
        return super().forward(x)


ONEDNN_OPS = ("_convolution_pointwise", "_reorder_convolution_weight", "_linear_pointwise", "_reorder_linear_weight")


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    return (device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()
            and all(hasattr(torch.ops.mkldnn, op) for op in ONEDNN_OPS))


def packs(module: nn.Module, dtype: torch.dtype) -> bool:
    """Whether `module`'s weight is packed for inference in `dtype`. 1x1 convolutions stay plain: on small inputs
    (4x4 cells) oneDNN runs them as a matrix product and unpacks a packed weight on every call, 50x slower. Linears
    are packed in bf16 only (oneDNN's packed fp32 matrix product is not faster here)."""
    if isinstance(module, Conv2d):
        return module.kernel_size != (1, 1)
    return isinstance(module, Linear) and dtype == torch.bfloat16


def packed_weight(module: Conv2d | Linear, weight: torch.Tensor) -> torch.Tensor:
    """`weight` in oneDNN's layout for `module`. Also hands freed heap memory back to the system: a packed weight is
    a little larger than the plain one it replaces (oneDNN pads channel blocks) and never fits the hole a plain one
    leaves, so while loading, each hole would otherwise stay resident (peak 1.20x the weights' bytes, not 1.14x)."""
    if isinstance(module, Conv2d):
        example_input = [1, module.in_channels, 64, 64]  # a layout hint only; any input size runs
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight.detach(), list(module.padding), list(module.stride), list(module.dilation), module.groups, example_input)
    else:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
    give_back_freed_memory()
    return packed


def pack_weights(module: nn.Module) -> None:
    """Replace the weight of every layer in `module` that `packs` by its packed form. The weights become opaque
    oneDNN tensors: for inference on this CPU, not for training, saving or moving. (Loading packs each weight as it
    is read instead: then no plain copy of the weights is ever held beside the packed ones.)"""
    for layer in module.modules():
        if isinstance(layer, (Conv2d, Linear)) and packs(layer, layer.weight.dtype) and not layer.weight.is_mkldnn:
            layer.weight = nn.Parameter(packed_weight(layer, layer.weight), requires_grad=False)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return library if library is not None and hasattr(library, "malloc_trim") else None


def give_back_freed_memory() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim; nothing elsewhere)."""
    library = _libc()
    if library is not None:
        library.malloc_trim(0)

