"""The VAE nodes as ComfyUI defines them: ComfyUI's VAEEncode / VAEDecode over our functions, the crop to multiples
of 8, VAEEncodeForInpaint's grey fill and grown mask, and the tiled encode and decode with ComfyUI's blending."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine_fixtures import env  # noqa: F401
from nodegraph.nodes import Latent, RunContext, builtin_registry
from nodegraph.nodes.vae import (ComfyVAEDecode, ComfyVAEEncode, VAEDecode, VAEDecodeTiled, VAEEncode,
                                 VAEEncodeForInpaint, VAEEncodeTiled, crop_to_multiple, inpaint_pixels)
from nodegraph.sd import load_checkpoint
from nodegraph.sd.tiled import decode_tiled, encode_tiled, tiled_scale

DEMO_CHECKPOINT = Path(__file__).resolve().parent.parent / "nodegraph" / "checkpoints" / "demo-shapes.safetensors"


@pytest.fixture(scope="module")
def sd(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)


def picture(height, width, batch=1, seed=0) -> torch.Tensor:
    """A smooth picture with some detail, in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([torch.sin(6 * xx) * 0.5 + 0.5, yy, (xx * yy) ** 0.5])
    noise = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 0.1
    return (base.unsqueeze(0) * 0.9 + noise).clamp(0, 1)


# --- ComfyUI's VAEEncode / VAEDecode and ours --------------------------------------------------------------------


def test_comfyuis_vae_nodes_have_its_inputs_and_ours_keep_theirs():
    registry = builtin_registry()
    assert registry.get_comfy("VAEEncode") is ComfyVAEEncode and ComfyVAEEncode.TYPE == "ComfyUI.VAEEncode"
    assert registry.get_comfy("VAEDecode") is ComfyVAEDecode and ComfyVAEDecode.TYPE == "ComfyUI.VAEDecode"
    assert (list(ComfyVAEEncode.input_specs()), list(ComfyVAEEncode.OUTPUTS)) == (["pixels", "vae"], ["LATENT"])
    assert (list(ComfyVAEDecode.input_specs()), list(ComfyVAEDecode.OUTPUTS)) == (["samples", "vae"], ["IMAGE"])
    assert (ComfyVAEEncode.DISPLAY_NAME, ComfyVAEDecode.DISPLAY_NAME) == ("VAE Encode", "VAE Decode")
    assert registry.get("VAEEncode") is VAEEncode and VAEEncode.COMFY_TYPE is None
    assert list(VAEEncode.input_specs()) == ["vae", "image"] and list(VAEDecode.input_specs()) == ["vae", "latent"]
    for class_type, inputs in {"VAEEncodeForInpaint": ["pixels", "vae", "mask", "grow_mask_by"],
                               "VAEDecodeTiled": ["samples", "vae", "tile_size", "overlap", "temporal_size",
                                                  "temporal_overlap"],
                               "VAEEncodeTiled": ["pixels", "vae", "tile_size", "overlap", "temporal_size",
                                                  "temporal_overlap"]}.items():
        assert list(registry.get_comfy(class_type).input_specs()) == inputs


def test_tiled_vae_defaults_and_bounds_follow_comfyui():
    for node_class, tile_step in ((VAEDecodeTiled, 32), (VAEEncodeTiled, 64)):
        specs = node_class.input_specs()
        assert [(specs[n].default, specs[n].minimum, specs[n].maximum) for n in specs if n not in ("samples", "pixels",
                                                                                                  "vae")] == [
            (512, 64, 4096), (64, 0, 4096), (64, 8, 4096), (8, 4, 4096)]
        assert node_class.Inputs.model_fields["tile_size"].json_schema_extra == {"step": tile_step}
    grow = VAEEncodeForInpaint.input_specs()["grow_mask_by"]
    assert (grow.default, grow.minimum, grow.maximum) == (6, 0, 64)


def test_comfyuis_vae_encode_and_decode_give_what_ours_give(sd):
    image = picture(48, 64)
    ours = VAEEncode().run(None, vae=sd, image=image)["latent"]
    comfy = ComfyVAEEncode().run(None, pixels=image, vae=sd)["LATENT"]
    assert torch.equal(ours.samples, comfy.samples) and ours.samples.shape == (1, 4, 6, 8)
    decoded = ComfyVAEDecode().run(None, samples=comfy, vae=sd)["IMAGE"]
    assert torch.equal(decoded, VAEDecode().run(None, vae=sd, latent=ours)["image"])
    assert decoded.shape == (1, 3, 48, 64) and decoded.min() >= 0 and decoded.max() <= 1


def test_vae_encode_crops_to_multiples_of_8_centred_as_comfyui(sd):
    image = picture(61, 70)  # ComfyUI keeps rows (61 % 8) // 2 = 2 .. 58 and columns 3 .. 67
    comfy = ComfyVAEEncode().run(None, pixels=image, vae=sd)["LATENT"].samples
    assert comfy.shape == (1, 4, 7, 8)
    assert torch.equal(comfy, sd.vae.encode(image[..., 2:58, 3:67] * 2 - 1))


def test_crop_to_multiple_keeps_the_centre():
    image = torch.arange(13 * 11, dtype=torch.float32).view(1, 1, 13, 11)
    cropped = crop_to_multiple(image, 8)
    assert cropped.shape == (1, 1, 8, 8)
    assert torch.equal(cropped, image[..., 2:10, 1:9])


def test_vae_encode_refuses_images_smaller_than_a_latent_cell():
    with pytest.raises(ValueError, match="at least 8"):
        VAEEncode().run(None, vae=None, image=torch.zeros(1, 3, 7, 64))


# --- VAEEncodeForInpaint ------------------------------------------------------------------------------------------


def test_inpaint_encode_greys_the_masked_pixels_and_keeps_the_rest():
    pixels = picture(16, 24)
    mask = torch.zeros(1, 16, 24)
    mask[0, 4:10, 6:12] = 0.7  # rounds to 1
    mask[0, 0, 0] = 0.4  # rounds to 0
    grey, noise_mask = inpaint_pixels(pixels, mask, grow_mask_by=0)
    inside = mask.round().bool().expand(1, 3, 16, 24)
    assert torch.all(grey[inside] == 0.5)
    assert torch.allclose(grey[~inside], pixels[~inside], atol=1e-7)  # (p - 0.5) * 1 + 0.5, as ComfyUI computes
    assert torch.equal(noise_mask, mask.round())


def test_inpaint_encode_grows_the_noise_mask_by_comfyuis_box():
    mask = torch.zeros(1, 32, 32)
    mask[0, 10, 20] = 1.0
    _, noise_mask = inpaint_pixels(torch.zeros(1, 3, 32, 32), mask, grow_mask_by=6)
    rows, cols = torch.nonzero(noise_mask[0], as_tuple=True)
    # a 6x6 box with ComfyUI's padding of ceil(5 / 2) = 3: two pixels up/left, three down/right
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (8, 13, 18, 23)
    _, odd = inpaint_pixels(torch.zeros(1, 3, 32, 32), mask, grow_mask_by=5)
    rows, cols = torch.nonzero(odd[0], as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (8, 12, 18, 22)


def test_inpaint_encode_resizes_the_mask_and_crops_both_like_the_pixels(sd):
    pixels = picture(35, 42)  # cropped to 32 x 40 from row 1, column 1
    small_mask = torch.zeros(1, 7, 6)
    small_mask[0, :, :3] = 1.0  # the left half
    result = VAEEncodeForInpaint().run(None, pixels=pixels, vae=sd, mask=small_mask, grow_mask_by=0)["LATENT"]
    full = F.interpolate(small_mask.view(1, 1, 7, 6), size=(35, 42), mode="bilinear")[:, 0, 1:33, 1:41].round()
    assert result.noise_mask.shape == (1, 32, 40) and torch.equal(result.noise_mask, full)
    grey, _ = inpaint_pixels(pixels, small_mask, 0)
    assert torch.equal(result.samples, sd.vae.encode(grey * 2 - 1))


def test_inpaint_encode_takes_one_mask_for_a_batch_and_refuses_mismatched_batches(sd):
    grey, noise_mask = inpaint_pixels(picture(16, 16, batch=3), torch.ones(16, 16), 6)
    assert grey.shape == (3, 3, 16, 16) and noise_mask.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="the mask has 2 pictures and pixels 3"):
        VAEEncodeForInpaint().run(None, pixels=picture(16, 16, batch=3), vae=sd, mask=torch.ones(2, 16, 16),
                                  grow_mask_by=6)


# --- tiled encode and decode -----------------------------------------------------------------------------------------


def reference_tiled(samples, function, tile_height, tile_width, overlap, scale, channels):
    """ComfyUI's tiled_scale blend written out independently, in float64: tiles start every tile - overlap until one
    reaches the end; each tile's weight is the product of per-axis ramps (p + 1) / f from each edge, f the scaled
    overlap (no ramp on an axis the tile is not longer than f); the blend is sum(w * tile) / sum(w)."""
    def starts(size, tile):
        if size <= tile:
            return [0]
        found, start = [], 0
        while start < size - overlap:
            found.append(start)
            start += tile - overlap
        return found

    def ramp(length, feather):
        if feather >= length:
            return np.ones(length)
        p = np.arange(length)
        return np.minimum(1, (p + 1) / feather) * np.minimum(1, (length - p) / feather)

    batch, _, height, width = samples.shape
    out_h, out_w = round(height * scale), round(width * scale)
    result = np.zeros((batch, channels, out_h, out_w))
    for b in range(batch):
        picture_ = samples[b : b + 1]
        if height <= tile_height and width <= tile_width:
            result[b] = function(picture_)[0].double().numpy()
            continue
        total, weights = np.zeros((channels, out_h, out_w)), np.zeros((out_h, out_w))
        for top in starts(height, tile_height):
            for left in starts(width, tile_width):
                tile = function(picture_[:, :, top : top + tile_height, left : left + tile_width])[0].double().numpy()
                feather = round(overlap * scale)
                weight = np.outer(ramp(tile.shape[1], feather), ramp(tile.shape[2], feather))
                y, x = round(top * scale), round(left * scale)
                rows, cols = min(tile.shape[1], out_h - y), min(tile.shape[2], out_w - x)
                total[:, y : y + rows, x : x + cols] += (tile * weight)[:, :rows, :cols]
                weights[y : y + rows, x : x + cols] += weight[:rows, :cols]
        result[b] = total / weights
    return torch.from_numpy(result)


def test_tiled_scale_of_a_local_function_is_that_function_whole():
    samples = torch.randn(2, 4, 37, 29, generator=torch.Generator().manual_seed(0))
    def local(x):
        return F.interpolate(torch.tanh(x[:, :3]), scale_factor=8, mode="nearest")  # each output cell sees one input
    assert torch.allclose(tiled_scale(samples, local, 16, 8, 4, 8, 3), local(samples), atol=1e-6)


def test_tiled_decode_is_comfyuis_three_pass_blend(sd):
    latent = sd.vae.encode(picture(96, 160) * 2 - 1)  # 12 x 20 cells
    tile, overlap = 8, 2
    passes = [(tile * 2, tile // 2), (tile // 2, tile * 2), (tile, tile)]  # (height, width): tall, wide, square
    expected = sum(reference_tiled(latent, sd.vae.decode, h, w, overlap, 8, 3) for h, w in passes) / 3
    assert torch.allclose(decode_tiled(sd.vae, latent, tile, tile, overlap).double(), expected, atol=1e-5)


def test_tiled_encode_is_comfyuis_three_pass_blend(sd):
    pixels = picture(96, 160) * 2 - 1
    tile, overlap = 64, 16
    passes = [(tile, tile), (tile // 2, tile * 2), (tile * 2, tile // 2)]  # square, wide, tall
    expected = sum(reference_tiled(pixels, sd.vae.encode, h, w, overlap, 1 / 8, 4) for h, w in passes) / 3
    assert torch.allclose(encode_tiled(sd.vae, pixels, tile, tile, overlap).double(), expected, atol=1e-5)


def test_tiled_nodes_are_the_tiled_functions_with_comfyuis_units(sd):
    latent = Latent(sd.vae.encode(picture(96, 160) * 2 - 1))
    decoded = VAEDecodeTiled().run(None, samples=latent, vae=sd, tile_size=64, overlap=32, temporal_size=64,
                                   temporal_overlap=8)["IMAGE"]
    # tile_size 64 < 4 * overlap: ComfyUI lowers the overlap to 16 pixels, i.e. 2 latent cells
    assert torch.equal(decoded, ((decode_tiled(sd.vae, latent.samples, 8, 8, 2) + 1) / 2).clamp(0, 1))
    pixels = picture(99, 165)  # cropped to 96 x 160, centred, like the untiled encode
    encoded = VAEEncodeTiled().run(None, pixels=pixels, vae=sd, tile_size=64, overlap=16, temporal_size=64,
                                   temporal_overlap=8)["LATENT"].samples
    assert torch.equal(encoded, encode_tiled(sd.vae, pixels[..., 1:97, 2:162] * 2 - 1, 64, 64, 16))


def test_tiled_vae_equals_the_untiled_one_when_the_picture_fits_in_every_tile(sd):
    latent = Latent(sd.vae.encode(picture(64, 64) * 2 - 1))
    tiled = VAEDecodeTiled().run(None, samples=latent, vae=sd, tile_size=1024, overlap=64, temporal_size=64,
                                 temporal_overlap=8)["IMAGE"]
    assert torch.allclose(tiled, VAEDecode().run(None, vae=sd, latent=latent)["image"], atol=1e-6)  # (a+a+a)/3
    pixels = picture(64, 64)
    tiled = VAEEncodeTiled().run(None, pixels=pixels, vae=sd, tile_size=128, overlap=64, temporal_size=64,
                                 temporal_overlap=8)["LATENT"]
    assert torch.allclose(tiled.samples, VAEEncode().run(None, vae=sd, image=pixels)["latent"].samples, atol=1e-6)


def shapes(size: int) -> torch.Tensor:
    """A disc and a square on a light ground, the demo checkpoint's kind of picture, in [0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.full((1, 3, size, size), 0.9)
    disc = ((xx - 0.4 * size) ** 2 + (yy - 0.5 * size) ** 2) < (0.23 * size) ** 2
    image[0, :, disc] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    square = (xx > 0.6 * size) & (xx < 0.9 * size) & (yy > 0.12 * size) & (yy < 0.43 * size)
    image[0, :, square] = torch.tensor([0.1, 0.2, 0.8])[:, None]
    return image


@pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the packaged demo checkpoint is not there")
def test_tiled_vae_stays_close_to_the_untiled_one_on_a_trained_vae():
    # Tiles see only their part of the picture (the VAE's attention and group norms are global), so tiled results
    # differ. Measured on the demo checkpoint's small VAE: 256 x 256, 256-pixel tiles overlapping by 64 (so the wide
    # and tall passes split the picture): decode mean |difference| 0.037 of the [0, 1] range, a third of the VAE's
    # own reconstruction error (0.108); encode mean |difference| 3.8% of the latents' spread. At ComfyUI's defaults
    # on 512 x 512: 0.039 (reconstruction error 0.141) and 5.6%.
    demo = load_checkpoint(DEMO_CHECKPOINT, device="cpu", dtype=torch.float32)
    pixels = shapes(256)
    latent = demo.vae.encode(pixels * 2 - 1)
    whole = VAEDecode().run(None, vae=demo, latent=Latent(latent))["image"]
    tiled = VAEDecodeTiled().run(None, samples=Latent(latent), vae=demo, tile_size=256, overlap=64, temporal_size=64,
                                 temporal_overlap=8)["IMAGE"]
    reconstruction_error = (whole - pixels).abs().mean()
    assert (tiled - whole).abs().mean() < 0.5 * reconstruction_error
    tiled_latent = VAEEncodeTiled().run(None, pixels=pixels, vae=demo, tile_size=256, overlap=64, temporal_size=64,
                                        temporal_overlap=8)["LATENT"].samples
    assert (tiled_latent - latent).abs().mean() < 0.06 * latent.std()


def test_tiled_nodes_report_each_tile_and_can_be_stopped(sd, env):
    reported = []
    ctx = RunContext(env=env, node_id="decode", workflow={}, report=lambda step, total, preview: reported.append(
        (step, total)))
    latent = Latent(sd.vae.encode(picture(96, 160) * 2 - 1))
    VAEDecodeTiled().run(ctx, samples=latent, vae=sd, tile_size=64, overlap=16, temporal_size=64, temporal_overlap=8)
    # 12 x 20 cells, tiles overlapping by 2: tall 16 x 4 (1 row of 9), wide 4 x 16 (5 rows of 2), square 8 x 8
    # (2 rows of 3)
    assert reported == [(i, 25) for i in range(1, 26)]
    ctx.interrupt_flag.set()
    with pytest.raises(Exception, match="interrupted"):
        VAEDecodeTiled().run(ctx, samples=latent, vae=sd, tile_size=64, overlap=16, temporal_size=64,
                             temporal_overlap=8)


def test_tiled_encode_with_an_overlap_as_large_as_its_smallest_tile_is_refused_clearly(sd):
    with pytest.raises(ValueError, match="VAEEncodeTiled: overlap 64 is too large for tile_size 128"):
        VAEEncodeTiled().run(None, pixels=picture(96, 160), vae=sd, tile_size=128, overlap=64, temporal_size=64,
                             temporal_overlap=8)


def test_tile_counts_follow_comfyuis_steps():
    from nodegraph.sd.tiled import tile_count
    assert tile_count(64, 64, 64, 64, 8) == 1
    assert tile_count(96, 160, 64, 64, 16) == math.ceil((96 - 16) / 48) * math.ceil((160 - 16) / 48) == 6
