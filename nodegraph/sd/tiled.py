"""Tiled VAE encoding and decoding, as ComfyUI's VAEEncodeTiled / VAEDecodeTiled do it (comfy/utils.py tiled_scale,
comfy/sd.py encode_tiled_ / decode_tiled_), for pictures too big to pass through the VAE in one piece.

`tiled_scale` runs a function over overlapping tiles and blends the results: each tile's output is weighted by a
mask that fades in over the overlap at every edge ((t + 1) / feather for the t-th row or column from an edge), and
the weighted sum is divided by the summed weights, so where only one tile covers a pixel it counts fully. The
encode and decode each average three such passes with differently shaped tiles (square, wide, tall), which moves
the seams of one pass into the interior of another's tiles.

Tiles see only their own part of the picture (the VAE's attention and group norms are global), so the result is
close to, not equal to, the untiled one.
"""

import itertools
from collections.abc import Callable

import torch


class TileError(ValueError):
    """Tiles that cannot cover the picture (an overlap as large as the tile)."""


TileFunction = Callable[[torch.Tensor], torch.Tensor]  # [1, C, h, w] -> [1, C', h * scale, w * scale]
TileCallback = Callable[[int, int], None]  # (tiles done, tiles in all) after each tile; may raise to stop


def tile_count(height: int, width: int, tile_height: int, tile_width: int, overlap: int) -> int:
    """How many tiles one pass over a height x width picture takes (ComfyUI's get_tiled_scale_steps)."""
    return len(tile_starts(height, tile_height, overlap)) * len(tile_starts(width, tile_width, overlap))


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side begin: every tile - overlap, up to the last one reaching the end (which may be
    shorter than a whole tile)."""
    if size <= tile:
        return [0]
    if tile <= overlap:
        raise TileError(f"tiles of {tile} with an overlap of {overlap} never advance: the overlap must be smaller "
                         "than the tile")
    return list(range(0, size - overlap, tile - overlap))


def feather_weights(height: int, width: int, feather_rows: int, feather_cols: int) -> torch.Tensor:
    """A tile's blending weights [1, 1, height, width]: 1 inside, fading linearly over `feather` rows and columns at
    each edge; a side shorter than or equal to its feather is not faded."""
    rows = torch.ones(height)
    cols = torch.ones(width)
    for weights, feather in ((rows, feather_rows), (cols, feather_cols)):
        if feather >= len(weights):
            continue
        for t in range(feather):
            weights[t] *= (t + 1) / feather
            weights[len(weights) - 1 - t] *= (t + 1) / feather
    return (rows[:, None] * cols[None, :]).view(1, 1, height, width)


@torch.no_grad()
def tiled_scale(samples: torch.Tensor, function: TileFunction, tile_height: int, tile_width: int, overlap: int,
                scale: float, out_channels: int, on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """`function` over overlapping tiles of each picture of `samples` [B, C, H, W], blended into one output of
    [B, out_channels, round(H * scale), round(W * scale)] (float32, CPU). A picture that fits in one tile is passed
    whole. `on_tile()` runs after every tile."""
    batch, _, height, width = samples.shape
    out_height, out_width = round(height * scale), round(width * scale)
    output = torch.empty(batch, out_channels, out_height, out_width)
    feather = round(overlap * scale)
    for index in range(batch):
        picture = samples[index : index + 1]
        if height <= tile_height and width <= tile_width:
            output[index : index + 1] = function(picture).float().cpu()
            if on_tile:
                on_tile()
            continue
        total = torch.zeros(1, out_channels, out_height, out_width)
        weight = torch.zeros(1, 1, out_height, out_width)
        starts = itertools.product(tile_starts(height, tile_height, overlap), tile_starts(width, tile_width, overlap))
        for top, left in starts:
            tile = picture[:, :, top : top + tile_height, left : left + tile_width]
            result = function(tile).float().cpu()
            mask = feather_weights(result.shape[-2], result.shape[-1], feather, feather)
            out_top, out_left = round(top * scale), round(left * scale)
            rows = min(result.shape[-2], out_height - out_top)
            cols = min(result.shape[-1], out_width - out_left)
            total[:, :, out_top : out_top + rows, out_left : out_left + cols] += (result * mask)[..., :rows, :cols]
            weight[:, :, out_top : out_top + rows, out_left : out_left + cols] += mask[..., :rows, :cols]
            if on_tile:
                on_tile()
        output[index : index + 1] = total / weight
    return output


def _progress(total: int, on_tile: TileCallback | None) -> Callable[[], None] | None:
    if on_tile is None:
        return None
    done = [0]

    def step() -> None:
        done[0] += 1
        on_tile(done[0], total)
    return step


def decode_tiled(vae, latent: torch.Tensor, tile_x: int = 64, tile_y: int = 64, overlap: int = 16,
                 on_tile: TileCallback | None = None) -> torch.Tensor:
    """Raw latents [B, 4, h, w] -> pixels [B, 3, 8h, 8w] in [-1, 1] (unclamped), decoded in tiles of tile_y x tile_x
    latent cells overlapping by `overlap` cells: the mean of a tall (tile_x / 2 by tile_y * 2), a wide and a square
    pass, in ComfyUI's order."""
    scale = vae.config.downscale
    passes = ((tile_y * 2, tile_x // 2), (tile_y // 2, tile_x * 2), (tile_y, tile_x))
    height, width = latent.shape[-2:]
    step = _progress(latent.shape[0] * sum(tile_count(height, width, th, tw, overlap) for th, tw in passes), on_tile)
    results = [tiled_scale(latent, vae.decode, th, tw, overlap, scale, vae.config.out_channels, step)
               for th, tw in passes]
    return (results[0] + results[1] + results[2]) / 3.0


def encode_tiled(vae, pixels: torch.Tensor, tile_x: int = 512, tile_y: int = 512, overlap: int = 64,
                 on_tile: TileCallback | None = None) -> torch.Tensor:
    """Pixels [B, 3, H, W] in [-1, 1] (sides multiples of 8) -> raw latents (posterior means), encoded in tiles of
    tile_y x tile_x pixels overlapping by `overlap` pixels: the mean of a square, a wide (tile_x * 2 by tile_y / 2)
    and a tall pass, in ComfyUI's order."""
    scale = 1 / vae.config.downscale
    passes = ((tile_y, tile_x), (tile_y // 2, tile_x * 2), (tile_y * 2, tile_x // 2))
    height, width = pixels.shape[-2:]
    step = _progress(pixels.shape[0] * sum(tile_count(height, width, th, tw, overlap) for th, tw in passes), on_tile)
    results = [tiled_scale(pixels, vae.encode, th, tw, overlap, scale, vae.config.latent_channels, step)
               for th, tw in passes]
    return (results[0] + results[1] + results[2]) / 3.0
