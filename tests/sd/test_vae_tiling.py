"""Tiled VAE decoding for latents too big to decode at once (its seamlessness is tested on the demo checkpoint)."""

import pytest
import torch

from nodegraph.sd import load_checkpoint
from nodegraph.sd.vae import blend_ramp, tile_starts


@pytest.mark.parametrize("length,tile,overlap", [(200, 64, 16), (65, 64, 16), (64, 64, 16), (100, 16, 8), (17, 16, 8)])
def test_tiles_cover_every_cell_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and min(starts[-1] + tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_blend_ramps_fade_only_towards_neighbours():
    ramp = blend_ramp(4, fade_in=True, fade_out=False, overlap=2, scale=2)
    assert ramp.tolist() == [0.125, 0.375, 0.625, 0.875, 1, 1, 1, 1]
    assert blend_ramp(4, False, False, 2, 2).tolist() == [1.0] * 8


def test_big_latents_are_decoded_in_tiles_of_the_configured_size(tiny_checkpoint, monkeypatch):
    sd = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)
    seen = []
    decode_one = sd.vae._decode
    monkeypatch.setattr(sd.vae, "_decode", lambda z: seen.append(tuple(z.shape[-2:])) or decode_one(z))
    monkeypatch.setattr(sd.vae, "tile_threshold", 12)
    monkeypatch.setattr(sd.vae, "tile_size", 8)
    monkeypatch.setattr(sd.vae, "tile_overlap", 4)
    sd.vae.decode(torch.randn(1, 4, 12, 12))
    assert seen == [(12, 12)]  # not above the threshold: one piece
    seen.clear()
    image = sd.vae.decode(torch.randn(1, 4, 16, 20))
    assert image.shape == (1, 3, 128, 160) and torch.isfinite(image).all()
    assert set(seen) == {(8, 8)} and len(seen) == 3 * 4
