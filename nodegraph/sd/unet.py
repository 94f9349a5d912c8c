"""The SD 1.x UNet (the LDM "openaimodel" layout). Attribute names follow the checkpoint's keys, so
`input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight` is exactly that attribute path here."""

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import multi_head_attention
from .layers import Conv2d, Linear

HEADS = 8  # SD 1.x uses 8 heads in every transformer block; shapes alone cannot tell


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)
    transformer_depth: int = 1
    context_dim: int = 768
    linear_projection: bool = False  # SD 2.x projects in/out of the transformer with linears, SD 1.x with 1x1 convs

    @classmethod
    def from_state_dict(cls, weights: dict) -> "UNetConfig":
        conv_in = weights["input_blocks.0.0.weight"]
        model_channels, in_channels = conv_in.shape[:2]
        # input_blocks.N.0 is a res block (has in_layers) or a downsampler (has op); a level ends at each downsampler.
        levels: list[list[int]] = [[]]
        for n in sorted({int(k.split(".")[1]) for k in weights if k.startswith("input_blocks.")} - {0}):
            if f"input_blocks.{n}.0.op.weight" in weights:
                levels.append([])
            else:
                levels[-1].append(n)
        channel_mult = tuple(weights[f"input_blocks.{blocks[0]}.0.out_layers.3.weight"].shape[0] // model_channels for blocks in levels)
        attention_levels = tuple(i for i, blocks in enumerate(levels) if f"input_blocks.{blocks[0]}.1.proj_in.weight" in weights)
        first_attention = f"input_blocks.{levels[attention_levels[0]][0]}.1"
        depth = 1 + max(int(m.group(1)) for k in weights if (m := re.match(re.escape(first_attention) + r"\.transformer_blocks\.(\d+)\.", k)))
        return cls(
            in_channels=in_channels,
            out_channels=weights["out.2.weight"].shape[0],
            model_channels=model_channels,
            channel_mult=channel_mult,
            num_res_blocks=len(levels[0]),
            attention_levels=attention_levels,
            transformer_depth=depth,
            context_dim=weights[f"{first_attention}.transformer_blocks.0.attn2.to_k.weight"].shape[1],
            linear_projection=weights[f"{first_attention}.proj_in.weight"].ndim == 2,
        )


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of the timesteps, frequencies spaced over dim/2 with no shift."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


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
    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        self.linear_projection = config.linear_projection
        project = (lambda: Linear(channels, channels)) if config.linear_projection else (lambda: Conv2d(channels, channels, 1))
        self.norm = group_norm(channels, 1e-6)
        self.proj_in = project()
        self.transformer_blocks = nn.ModuleList(TransformerBlock(channels, config.context_dim, HEADS) for _ in range(config.transformer_depth))
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


class UNet(nn.Module):
    """eps = unet(x [B,C,h,w], t [B] or scalar, context [B,T,context_dim]); runs in the module's dtype."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        mc = config.model_channels
        embed_dim = mc * 4
        self.time_embed = nn.Sequential(Linear(mc, embed_dim), nn.SiLU(), Linear(embed_dim, embed_dim))

        self.input_blocks = nn.ModuleList([Block([Conv2d(config.in_channels, mc, 3, padding=1)])])
        skip_channels = [mc]
        channels = mc
        last_level = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock(channels, mc * mult, embed_dim)]
                channels = mc * mult
                if level in config.attention_levels:
                    layers.append(SpatialTransformer(channels, config))
                self.input_blocks.append(Block(layers))
                skip_channels.append(channels)
            if level != last_level:
                self.input_blocks.append(Block([Downsample(channels)]))
                skip_channels.append(channels)

        self.middle_block = Block([ResBlock(channels, channels, embed_dim), SpatialTransformer(channels, config), ResBlock(channels, channels, embed_dim)])

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(channels + skip_channels.pop(), mc * mult, embed_dim)]
                channels = mc * mult
                if level in config.attention_levels:
                    layers.append(SpatialTransformer(channels, config))
                if level != 0 and i == config.num_res_blocks:
                    layers.append(Upsample(channels))
                self.output_blocks.append(Block(layers))

        self.out = nn.Sequential(group_norm(channels, 1e-5), nn.SiLU(), Conv2d(channels, config.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor) -> torch.Tensor:
        weight = self.out[2].weight
        x = x.to(weight.device, weight.dtype)
        context = context.to(weight.device, weight.dtype)
        t = torch.as_tensor(t, device=weight.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(weight.dtype))

        skips = []
        for block in self.input_blocks:
            x = block(x, emb, context)
            skips.append(x)
        x = self.middle_block(x, emb, context)
        for block in self.output_blocks:
            x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb, context, upsample_size=skips[-1].shape[-2:] if skips else None)
        return self.out(x)
