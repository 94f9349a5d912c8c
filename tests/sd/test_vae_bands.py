"""Big pictures decode in bands of rows: the same pixels as a whole decode, with less memory at full resolution."""

import pytest
import torch

from nodegraph.sd import load_checkpoint


@pytest.fixture(scope="module")
def vae(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32).vae


@pytest.mark.parametrize("band_elements", [1, 20_000, 10**9])  # 16-row bands, a few bands, one band
@pytest.mark.parametrize("shape", [(1, 4, 20, 28), (2, 4, 9, 6)])  # several bands per level; a batch (per-sample norms)
def test_band_decode_equals_the_whole_decode(vae, band_elements, shape):
    torch.manual_seed(0)
    z = vae.post_quant_conv(torch.randn(shape))
    with torch.no_grad():
        whole = vae.decoder(z)
        banded = vae.decoder.forward_in_bands(z, band_elements)
    assert banded.shape == whole.shape
    assert (banded - whole).abs().max() <= 1e-4 * whole.abs().max()


def test_decode_switches_to_bands_above_the_configured_size(vae, monkeypatch):
    calls = []
    in_bands = vae.decoder.forward_in_bands
    monkeypatch.setattr(vae.decoder, "forward_in_bands", lambda z, band_elements: calls.append(z.shape) or in_bands(z, band_elements))
    monkeypatch.setattr(vae, "whole_decode_cells", 12 * 12)
    vae.decode(torch.randn(1, 4, 12, 12))
    assert calls == []
    image = vae.decode(torch.randn(1, 4, 12, 13))
    assert calls == [(1, 4, 12, 13)] and image.shape == (1, 3, 96, 104) and image.dtype == torch.float32
