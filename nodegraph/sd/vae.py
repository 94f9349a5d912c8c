"""The SD 1.x VAE (the LDM AutoencoderKL layout; attribute names follow the checkpoint's keys)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import multi_head_attention
from .layers import Conv2d


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
        self.conv1 = Conv2d(channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Identity() if channels == out_channels else Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; the projections are 1x1 convolutions in SD files."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = Conv2d(channels, channels, 1)
        self.k = Conv2d(channels, channels, 1)
        self.v = Conv2d(channels, channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))
        h = multi_head_attention(q, k, v, heads=1)
        return x + self.proj_out(h.transpose(1, 2).reshape(batch, channels, height, width))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # LDM pads right/bottom only, then convolves unpadded


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

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
        self.conv_in = Conv2d(config.in_channels, ch, 3, padding=1)
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
        self.conv_out = Conv2d(channels, 2 * config.latent_channels, 3, padding=1)

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
        self.conv_in = Conv2d(config.latent_channels, channels, 3, padding=1)
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
        self.conv_out = Conv2d(channels, config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))

    def forward_in_bands(self, z: torch.Tensor, band_elements: int) -> torch.Tensor:
        """The same computation as forward, for big pictures, with much less memory: the latent-resolution part
        (with the only, global, attention) runs whole; above it every layer runs in bands of rows (each reading the
        rows its 3x3 convolution needs from its neighbours) into one tensor per layer, so the temporaries of the
        norms, activations and convolutions exist for one band only. The largest of those tensors, the upsampled
        input of the full-resolution level, is never held: its rows are computed when read (twice: once for its
        group-norm statistics, once for use). Each group norm takes the statistics of its whole input, so the
        result equals forward's: no seams, no tone shifts between parts."""
        x = self.mid(self.conv_in(z)).contiguous(memory_format=torch.channels_last)
        for level in reversed(self.up):
            for block in level.block:
                x = resnet_block_in_bands(block, x, band_elements)
            if level.resample_name:
                x = UpsampledRows(level.upsample, x)
                if level is not self.up[1]:  # only the full-resolution level's input is worth computing twice
                    x = x.held(band_elements)
        return conv3x3_in_bands(self.conv_out, x, norm_then_silu(self.norm_out, x, band_elements), band_elements)


class VAE(nn.Module):
    """encode: image [B,3,H,W] in [-1,1] -> posterior mean in raw (unscaled) latent space; decode: the inverse, unclamped.

    Both accept tensors of any dtype and device, run in the module's, and return float32 on the CPU: images and
    latents are data that outlive one model call."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = Conv2d(config.latent_channels, config.latent_channels, 1)

    def _place(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.post_quant_conv.weight
        return x.to(weight.device, weight.dtype)

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(self._place(image)))
        return moments[:, : self.config.latent_channels].float().cpu()

    # Above this many latent cells per picture (512x512 pixels), decode in bands of rows: the same result, with the
    # norms', activations' and convolutions' temporaries at full resolution held for one band at a time.
    whole_decode_cells: int = 64 * 64
    band_elements: int = 2**24

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        z = self.post_quant_conv(self._place(latent))
        if latent.shape[-2] * latent.shape[-1] > self.whole_decode_cells:
            return self.decoder.forward_in_bands(z, self.band_elements).float().cpu()
        return self.decoder(z).float().cpu()


def row_bands(height: int, row_elements: int, band_elements: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) covering `height` rows, about band_elements elements each."""
    rows = max(16, band_elements // row_elements)  # each band recomputes 2 rows of its neighbours: keep that small
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


class UpsampledRows:
    """upsample(x) [B,C,2H,2W], computed band by band: each read computes the rows asked for from the rows of x they
    need (a 3x3 convolution after nearest-neighbour doubling reaches one row of x beyond each side)."""

    def __init__(self, upsample: "Upsample", x: torch.Tensor):
        self.upsample, self.x = upsample, x
        batch, _, height, width = x.shape
        self.shape = torch.Size((batch, upsample.conv.out_channels, 2 * height, 2 * width))
        self.dtype, self.device = x.dtype, x.device

    def rows(self, start: int, stop: int) -> torch.Tensor:
        low, high = max((start - 1) // 2, 0), min((stop + 2) // 2, self.x.shape[-2])
        result = self.upsample(self.x[:, :, low:high])
        return result[:, :, start - 2 * low:stop - 2 * low]

    def held(self, band_elements: int) -> torch.Tensor:
        """All rows in one tensor, computed band by band."""
        batch, channels, height, width = self.shape
        out = empty_rows(self, channels)
        for start, stop in row_bands(height, batch * channels * width, band_elements):
            out[:, :, start:stop] = self.rows(start, stop)
        return out


def read_rows(source: "torch.Tensor | UpsampledRows", start: int, stop: int) -> torch.Tensor:
    return source[:, :, start:stop] if isinstance(source, torch.Tensor) else source.rows(start, stop)


def empty_rows(x: "torch.Tensor | UpsampledRows", channels: int) -> torch.Tensor:
    """A tensor of x's size with `channels` channels, channels-last like the convolutions' own outputs, so a band
    of rows is one block of memory."""
    batch, _, height, width = x.shape
    return torch.empty(batch, channels, height, width, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def norm_then_silu(norm: nn.GroupNorm, x: "torch.Tensor | UpsampledRows", band_elements: int):
    """silu(norm(rows)) for any band of x's rows, with the group statistics of all of x: each band runs as a batch
    norm whose per-channel running statistics are its group's, one sample at a time (a group norm's statistics are
    per sample). The statistics come from each band's group norm kernel, which reports them beside its output,
    faster than any separate reduction here."""
    batch, channels, height, width = x.shape
    mean, square = torch.zeros(batch, norm.num_groups, dtype=torch.float64), torch.zeros(batch, norm.num_groups, dtype=torch.float64)
    for start, stop in row_bands(height, batch * channels * width, band_elements):
        band = read_rows(x, start, stop).contiguous(memory_format=torch.channels_last)  # a copy only for a batch of several
        _, band_mean, band_rstd = torch.native_group_norm(band, None, None, batch, channels, band[0, 0].numel(), norm.num_groups, norm.eps)
        band_mean, band_variance = band_mean.double().cpu(), band_rstd.double().cpu().pow(-2) - norm.eps
        share = (stop - start) / height
        mean += band_mean.reshape(batch, -1) * share
        square += (band_variance + band_mean.square()).reshape(batch, -1) * share
    per_group = channels // norm.num_groups
    means = mean.float().repeat_interleave(per_group, dim=1).to(x.device)
    variances = (square - mean.square()).clamp_min(0).float().repeat_interleave(per_group, dim=1).to(x.device)
    weight, bias = norm.weight.float(), norm.bias.float()

    def apply(rows: torch.Tensor) -> torch.Tensor:
        normalized = torch.cat([F.batch_norm(rows[i:i + 1], means[i], variances[i], weight, bias, False, 0.0, norm.eps)
                                for i in range(rows.shape[0])])
        return F.silu(normalized, inplace=True)
    return apply


def conv3x3_in_bands(conv: nn.Conv2d, x: "torch.Tensor | UpsampledRows", before, band_elements: int,
                     out: torch.Tensor | None = None, shortcut: tuple[nn.Module, torch.Tensor] | None = None) -> torch.Tensor:
    """conv(before(x)), band by band. A band reads one more row of x on either side (a 3x3 convolution's reach) and
    keeps only its own rows of the result. Adds into `out` when given. With `shortcut` (module, tensor), also writes
    module(band's own rows of x) into that tensor, from the same read."""
    if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
        raise ValueError(f"band convolution needs a 3x3 kernel, padding 1 and stride 1, not {conv}")
    batch, channels, height, width = x.shape
    adding = out is not None
    if out is None:
        out = empty_rows(x, conv.out_channels)
    for start, stop in row_bands(height, batch * max(channels, conv.out_channels) * width, band_elements):
        low, high = max(start - 1, 0), min(stop + 1, height)
        rows = read_rows(x, low, high)
        if shortcut is not None:
            module, into = shortcut
            into[:, :, start:stop] = module(rows[:, :, start - low:stop - low])
        result, target = conv(before(rows))[:, :, start - low:stop - low], out[:, :, start:stop]
        target.add_(result) if adding else target.copy_(result)
    return out


def resnet_block_in_bands(block: "ResnetBlock", x: "torch.Tensor | UpsampledRows", band_elements: int) -> torch.Tensor:
    if isinstance(block.nin_shortcut, nn.Identity):
        if isinstance(x, UpsampledRows):
            x = x.held(band_elements)
        h = conv3x3_in_bands(block.conv1, x, norm_then_silu(block.norm1, x, band_elements), band_elements)
        out = x  # conv2 reads h, not x: the block's result can be added into x in place
    else:  # the shortcut reads the same rows of x as conv1: one pass, and x need never be held whole
        out = empty_rows(x, block.nin_shortcut.out_channels)
        h = conv3x3_in_bands(block.conv1, x, norm_then_silu(block.norm1, x, band_elements), band_elements,
                             shortcut=(block.nin_shortcut, out))
    return conv3x3_in_bands(block.conv2, h, norm_then_silu(block.norm2, h, band_elements), band_elements, out=out)
