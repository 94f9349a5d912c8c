"""The SD 1.x VAE (the LDM AutoencoderKL layout; attribute names follow the checkpoint's keys)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import multi_head_attention


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def from_state_dict(cls, weights: dict) -> "VAEConfig":
        base_channels, in_channels = weights["encoder.conv_in.weight"].shape[:2]
        levels = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("encoder.down."))
        return cls(
            in_channels=in_channels,
            out_channels=weights["decoder.conv_out.weight"].shape[0],
            base_channels=base_channels,
            channel_mult=tuple(weights[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // base_channels for i in range(levels)),
            num_res_blocks=1 + max(int(k.split(".")[4]) for k in weights if k.startswith("encoder.down.0.block.")),
            latent_channels=weights["post_quant_conv.weight"].shape[0],
        )


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; the projections are 1x1 convolutions in SD files."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))
        h = multi_head_attention(q, k, v, heads=1)
        return x + self.proj_out(h.transpose(1, 2).reshape(batch, channels, height, width))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # LDM pads right/bottom only, then convolves unpadded


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: `block.N` res blocks, then an optional `downsample`/`upsample`."""

    def __init__(self, blocks: list[nn.Module], resample: tuple[str, nn.Module] | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = None
        if resample is not None:
            self.resample_name = resample[0]
            self.add_module(*resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return getattr(self, self.resample_name)(x) if self.resample_name else x


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch = config.base_channels
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        channels = ch
        for level, mult in enumerate(config.channel_mult):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(channels, ch * mult))
                channels = ch * mult
            last = level == len(config.channel_mult) - 1
            self.down.append(Level(blocks, None if last else ("downsample", Downsample(channels))))
        self.mid = Mid(channels)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x))))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch = config.base_channels
        channels = ch * config.channel_mult[-1]
        self.conv_in = nn.Conv2d(config.latent_channels, channels, 3, padding=1)
        self.mid = Mid(channels)
        # up.N is indexed by resolution level like the encoder's down.N, so up.0 (full resolution) runs last.
        levels = {}
        for level in reversed(range(len(config.channel_mult))):
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, ch * config.channel_mult[level]))
                channels = ch * config.channel_mult[level]
            levels[level] = Level(blocks, None if level == 0 else ("upsample", Upsample(channels)))
        self.up = nn.ModuleList(levels[level] for level in range(len(config.channel_mult)))
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VAE(nn.Module):
    """encode: image [B,3,H,W] in [-1,1] -> posterior mean in raw (unscaled) latent space; decode: the inverse, unclamped.

    Both accept tensors of any dtype and device, run in the module's, and return float32 on the CPU: images and
    latents are data that outlive one model call."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    def _place(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.post_quant_conv.weight
        return x.to(weight.device, weight.dtype)

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(self._place(image)))
        return moments[:, : self.config.latent_channels].float().cpu()

    # Latents with a side above this many cells are decoded in tiles: a 2048px image (256 cells) would otherwise
    # hold several GB of activations at full resolution.
    tile_threshold: int = 128
    tile_size: int = 64  # cells (512px, the size SD 1.x was trained at)
    tile_overlap: int = 16

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if max(latent.shape[-2:]) > self.tile_threshold:
            return self.decode_tiled(latent, self.tile_size, self.tile_overlap)
        return self._decode(latent)

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self._place(latent))).float().cpu()

    @torch.no_grad()
    def decode_tiled(self, latent: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
        """Decode overlapping tiles and blend them with linear ramps across each overlap, so no seam shows while
        memory stays that of one tile."""
        scale = self.config.downscale
        batch, _, height, width = latent.shape
        out = torch.zeros(batch, self.config.out_channels, height * scale, width * scale)
        weight = torch.zeros(1, 1, height * scale, width * scale)
        for top in tile_starts(height, tile, overlap):
            for left in tile_starts(width, tile, overlap):
                bottom, right = min(top + tile, height), min(left + tile, width)
                pixels = self._decode(latent[:, :, top:bottom, left:right])
                ramp = (blend_ramp(bottom - top, top > 0, bottom < height, overlap, scale)[:, None]
                        * blend_ramp(right - left, left > 0, right < width, overlap, scale)[None, :])
                rows, cols = slice(top * scale, bottom * scale), slice(left * scale, right * scale)
                out[:, :, rows, cols] += pixels * ramp
                weight[:, :, rows, cols] += ramp
        return out / weight


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles begin along one axis: every tile - overlap cells, the last one flush with the end."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_ramp(cells: int, fade_in: bool, fade_out: bool, overlap: int, scale: int) -> torch.Tensor:
    """Per-pixel weights along one side of a tile: rising over the overlap where a neighbour precedes it, falling
    where one follows; never exactly zero, so every pixel has weight."""
    size, ramp = cells * scale, overlap * scale
    weights = torch.ones(size)
    rise = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
    if fade_in:
        weights[:ramp] = torch.minimum(weights[:ramp], rise)
    if fade_out:
        weights[-ramp:] = torch.minimum(weights[-ramp:], rise.flip(0))
    return weights
