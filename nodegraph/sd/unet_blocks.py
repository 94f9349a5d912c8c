"""The layers of the LDM "openaimodel" UNet (nodegraph.sd.unet builds them into SD 1.x, SD 2.x and SDXL UNets).
Attribute names follow the checkpoint's keys: `in_layers`, `emb_layers`, `transformer_blocks.N.attn2.to_k`, ..."""

import torch
import torch.nn.functional as F
from torch import nn

from .attention import multi_head_attention
from .layers import Conv2d, Linear


def group_norm(channels: int, eps: float) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=eps)


class ResBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int, embed_dim: int):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels, 1e-5), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(embed_dim, out_channels))
        self.out_layers = nn.Sequential(group_norm(out_channels, 1e-5), nn.SiLU(), nn.Dropout(0.0), Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if channels == out_channels else Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = Linear(dim, dim, bias=False)
        self.to_k = Linear(context_dim, dim, bias=False)
        self.to_v = Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        return self.to_out(multi_head_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads))


class GEGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = Linear(dim, hidden * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0.0), Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """`depth` transformer blocks over the latent cells. SD 1.x projects in and out with 1x1 convolutions, SD 2.x and
    SDXL with linears (`linear_projection`): the same arithmetic, applied before or after flattening the cells."""

    def __init__(self, channels: int, depth: int, heads: int, context_dim: int, linear_projection: bool):
        super().__init__()
        self.linear_projection = linear_projection
        project = (lambda: Linear(channels, channels)) if linear_projection else (lambda: Conv2d(channels, channels, 1))
        self.norm = group_norm(channels, 1e-6)
        self.proj_in = project()
        self.transformer_blocks = nn.ModuleList(TransformerBlock(channels, context_dim, heads) for _ in range(depth))
        self.proj_out = project()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        if not self.linear_projection:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)
        if self.linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear_projection:
            h = self.proj_out(h)
        h = h.transpose(1, 2).reshape(batch, channels, height, width)
        if not self.linear_projection:
            h = self.proj_out(h)
        return x + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
        # Upsampling to the skip's size (rather than x2) keeps latents whose sides are not powers of two working.
        x = F.interpolate(x, size=size, mode="nearest") if size is not None else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class Block(nn.ModuleList):
    """One numbered entry of input_blocks/middle_block/output_blocks: layers that each take what they need."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, upsample_size=None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x
