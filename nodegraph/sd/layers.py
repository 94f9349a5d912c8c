"""Layers whose CPU inference runs from weights packed once into oneDNN's own blocked layout.

A plain convolution weight is reordered into that layout on every call. At SD's deep, low-resolution levels (1280
to 2560 channels at 8x8 or 16x16 latent cells) the reorder takes as long as the arithmetic, so packing once at load
makes those convolutions up to 2.5x faster; at full resolution it changes little. Results are bit-identical: the
same oneDNN algorithm runs, minus the reorder."""

import torch
from torch import nn


class Conv2d(nn.Conv2d):
    """nn.Conv2d that runs from a packed weight once `pack_convolutions` has given it one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_mkldnn:
            return torch.ops.mkldnn._convolution_pointwise(
                x.contiguous(memory_format=torch.channels_last), self.weight, self.bias, list(self.padding),
                list(self.stride), list(self.dilation), self.groups, "none", [], "")
        return super().forward(x)


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    return (device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"))


def pack_convolutions(module: nn.Module) -> None:
    """Replace the weight of every Conv2d in `module` wider than 1x1 by its packed form, one at a time (memory grows by one weight at
    most). The weights become opaque oneDNN tensors: for inference on this CPU, not for training, saving or moving."""
    for conv in module.modules():
        # 1x1 convolutions are left plain: on small inputs (4x4 cells) oneDNN runs them as a matrix product and
        # would unpack a packed weight on every call, 50x slower; plain ones lose nothing to a reorder there.
        if isinstance(conv, Conv2d) and conv.kernel_size != (1, 1) and not conv.weight.is_mkldnn:
            example_input = [1, conv.in_channels, 64, 64]  # a layout hint only; any input size runs
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                conv.weight.detach(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, example_input)
            del conv.weight
            conv.register_buffer("weight", packed)
