"""The UNet of SD 1.x, SD 2.x and SDXL (the LDM "openaimodel" layout; its layers are in unet_blocks.py). Attribute
names follow the checkpoint's keys, so `input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight` is exactly that
attribute path here. The families differ only in numbers the file's shapes tell (levels, per-block transformer
depths, projections, context width, input channels, SDXL's `label_emb`), plus the number of attention heads, which
shapes cannot tell: the caller names it by family (`head_size`)."""

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from .layers import Conv2d, Linear
from .unet_blocks import Block, Downsample, ResBlock, SpatialTransformer, Upsample, group_norm

HEADS = 8  # SD 1.x uses 8 heads in every transformer block, whatever its width
ATTENTION_KEY = re.compile(r"((?:input|output)_blocks\.\d+|middle_block)\.1\.transformer_blocks\.(\d+)\.")


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4  # 9 for inpainting UNets (latent, mask, masked-image latent)
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # SD 1.x/2.x have `transformer_depth` blocks at every res block of `attention_levels` and in the middle block.
    attention_levels: tuple[int, ...] = (0, 1, 2)
    transformer_depth: int = 1
    context_dim: int = 768
    linear_projection: bool = False  # SD 2.x and SDXL project in/out of the transformer with linears, SD 1.x with 1x1 convs
    head_size: int | None = None  # None: SD 1.x's 8 heads everywhere; SD 2.x and SDXL: channels // 64 heads
    adm_in_channels: int | None = None  # SDXL's label_emb input (2816 base, 2560 refiner); None: no label_emb
    # Per-block depths where a UNet differs from the uniform layout above (SDXL: 0/2/10 by level, middle 10; distilled
    # SDXL models vary within a level), ComfyUI's transformer_depth / _middle / _output; None follows the uniform one.
    # 0 means the block has no transformer.
    transformer_depth_input: tuple[int, ...] | None = None  # per res block of input_blocks, shallowest level first
    transformer_depth_middle: int | None = None
    # per output block in output_blocks order, deepest level first (ComfyUI lists these the other way round)
    transformer_depth_output: tuple[int, ...] | None = None

    def __post_init__(self):
        levels, blocks = len(self.channel_mult), self.num_res_blocks
        for name, count in (("transformer_depth_input", levels * blocks), ("transformer_depth_output", levels * (blocks + 1))):
            depths = getattr(self, name)
            if depths is not None and len(depths) != count:
                raise ValueError(f"{name} has {len(depths)} depths; {levels} levels of {blocks} res blocks need {count}")

    def _uniform_depth(self, level: int) -> int:
        return self.transformer_depth if level in self.attention_levels else 0

    @property
    def input_depths(self) -> tuple[int, ...]:
        if self.transformer_depth_input is not None:
            return self.transformer_depth_input
        return tuple(self._uniform_depth(level) for level in range(len(self.channel_mult)) for _ in range(self.num_res_blocks))

    @property
    def middle_depth(self) -> int:
        return self.transformer_depth if self.transformer_depth_middle is None else self.transformer_depth_middle

    @property
    def output_depths(self) -> tuple[int, ...]:
        if self.transformer_depth_output is not None:
            return self.transformer_depth_output
        return tuple(self._uniform_depth(level) for level in reversed(range(len(self.channel_mult))) for _ in range(self.num_res_blocks + 1))

    def heads(self, channels: int) -> int:
        if self.head_size is None:
            return HEADS
        if channels % self.head_size:
            raise ValueError(f"{channels} channels do not split into heads of {self.head_size}")
        return channels // self.head_size

    @classmethod
    def from_state_dict(cls, weights: dict, head_size: int | None = None) -> "UNetConfig":
        """The config of a UNet state dict (tensors or meta tensors, keys without `model.diffusion_model.`).
        `head_size` comes from the family (None for SD 1.x's 8 heads, 64 for SD 2.x and SDXL)."""
        conv_in = weights["input_blocks.0.0.weight"]
        model_channels, in_channels = conv_in.shape[:2]
        # input_blocks.N.0 is a res block (has in_layers) or a downsampler (has op); a level ends at each downsampler.
        levels: list[list[int]] = [[]]
        for n in sorted({int(k.split(".")[1]) for k in weights if k.startswith("input_blocks.")} - {0}):
            if f"input_blocks.{n}.0.op.weight" in weights:
                levels.append([])
            else:
                levels[-1].append(n)
        if len({len(blocks) for blocks in levels}) != 1:
            raise ValueError(f"UNet levels have different numbers of res blocks: {[len(b) for b in levels]}")
        num_res_blocks = len(levels[0])
        channel_mult = tuple(weights[f"input_blocks.{blocks[0]}.0.out_layers.3.weight"].shape[0] // model_channels for blocks in levels)

        depths: dict[str, int] = {}  # block -> number of transformer blocks, for blocks that have a transformer
        for key in weights:
            if m := ATTENTION_KEY.match(key):
                depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(2)) + 1)
        input_depths = tuple(depths.get(f"input_blocks.{n}", 0) for blocks in levels for n in blocks)
        output_count = len(levels) * (num_res_blocks + 1)
        output_depths = tuple(depths.get(f"output_blocks.{n}", 0) for n in range(output_count))
        middle_depth = depths.get("middle_block", 0)

        attention_levels = tuple(i for i, blocks in enumerate(levels) if any(depths.get(f"input_blocks.{n}") for n in blocks))
        transformer_depth = next((d for d in input_depths if d), middle_depth or 1)
        first = next(iter(depths), None)  # any transformer tells the context width and the projection kind
        uniform = cls(channel_mult=channel_mult, num_res_blocks=num_res_blocks, attention_levels=attention_levels,
                      transformer_depth=transformer_depth)
        return cls(
            in_channels=in_channels,
            out_channels=weights["out.2.weight"].shape[0],
            model_channels=model_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_levels=attention_levels,
            transformer_depth=transformer_depth,
            context_dim=weights[f"{first}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1] if first else cls.context_dim,
            linear_projection=weights[f"{first}.1.proj_in.weight"].ndim == 2 if first else False,
            head_size=head_size,
            adm_in_channels=weights["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in weights else None,
            transformer_depth_input=None if input_depths == uniform.input_depths else input_depths,
            transformer_depth_middle=None if middle_depth == uniform.middle_depth else middle_depth,
            transformer_depth_output=None if output_depths == uniform.output_depths else output_depths,
        )


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of the timesteps, frequencies spaced over dim/2 with no shift."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class UNet(nn.Module):
    """eps = unet(x [B,C,h,w], t [B] or scalar, context [B,T,context_dim], y [B,adm_in_channels] for SDXL);
    runs in the module's dtype."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        mc = config.model_channels
        embed_dim = mc * 4
        self.time_embed = nn.Sequential(Linear(mc, embed_dim), nn.SiLU(), Linear(embed_dim, embed_dim))
        if config.adm_in_channels:
            # SDXL's size/aesthetic conditioning joins the time embedding (the file nests it: label_emb.0.0, label_emb.0.2)
            self.label_emb = nn.Sequential(nn.Sequential(Linear(config.adm_in_channels, embed_dim), nn.SiLU(), Linear(embed_dim, embed_dim)))

        def with_transformer(layers: list[nn.Module], channels: int, depth: int) -> list[nn.Module]:
            if depth:
                layers.append(SpatialTransformer(channels, depth, config.heads(channels), config.context_dim, config.linear_projection))
            return layers

        self.input_blocks = nn.ModuleList([Block([Conv2d(config.in_channels, mc, 3, padding=1)])])
        input_depths = iter(config.input_depths)
        skip_channels = [mc]
        channels = mc
        last_level = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock(channels, mc * mult, embed_dim)]
                channels = mc * mult
                self.input_blocks.append(Block(with_transformer(layers, channels, next(input_depths))))
                skip_channels.append(channels)
            if level != last_level:
                self.input_blocks.append(Block([Downsample(channels)]))
                skip_channels.append(channels)

        middle = with_transformer([ResBlock(channels, channels, embed_dim)], channels, config.middle_depth)
        self.middle_block = Block([*middle, ResBlock(channels, channels, embed_dim)])

        self.output_blocks = nn.ModuleList()
        output_depths = iter(config.output_depths)
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(channels + skip_channels.pop(), mc * mult, embed_dim)]
                channels = mc * mult
                with_transformer(layers, channels, next(output_depths))
                if level != 0 and i == config.num_res_blocks:
                    layers.append(Upsample(channels))
                self.output_blocks.append(Block(layers))

        self.out = nn.Sequential(group_norm(channels, 1e-5), nn.SiLU(), Conv2d(channels, config.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.out[2].weight
        x = x.to(weight.device, weight.dtype)
        context = context.to(weight.device, weight.dtype)
        t = torch.as_tensor(t, device=weight.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(weight.dtype))
        adm = self.config.adm_in_channels
        if adm:
            if y is None:
                raise ValueError(f"this UNet (SDXL) needs y, the [B, {adm}] size conditioning vector (nodegraph.sd.adm)")
            if y.ndim != 2 or y.shape[1] != adm or y.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"y must be [{x.shape[0]}, {adm}] (or [1, {adm}]), not {list(y.shape)}")
            emb = emb + self.label_emb(y.to(weight.device, weight.dtype))
        elif y is not None:
            raise ValueError("this UNet has no label_emb: it takes no y (only SDXL UNets do)")

        skips = []
        for block in self.input_blocks:
            x = block(x, emb, context)
            skips.append(x)
        x = self.middle_block(x, emb, context)
        for block in self.output_blocks:
            x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb, context, upsample_size=skips[-1].shape[-2:] if skips else None)
        return self.out(x)
