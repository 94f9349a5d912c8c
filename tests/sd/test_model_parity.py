"""Our UNet, VAE and text encoder against diffusers and transformers on the same random-weight file, fp32."""

import pytest
import torch

from nodegraph.sd import load_checkpoint
from reference import reference_models

TOLERANCE = 1e-4


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tiny_config):
    ours = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)
    return ours, reference_models(tiny_checkpoint, tiny_config)


def test_unet_matches_diffusers_on_a_non_square_latent(models, tiny_config):
    ours, (unet, _, _) = models
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 8, generator=generator)  # 48x64 pixels: odd sizes at the deepest level
    context = torch.randn(2, 77, tiny_config.unet.context_dim, generator=generator)
    t = torch.tensor([981, 1])
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=context).sample
        actual = ours.unet(x, t, context)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= TOLERANCE


def test_vae_encode_gives_the_posterior_mean_of_diffusers(models):
    ours, (_, vae, _) = models
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(image).latent_dist.mean
    actual = ours.vae.encode(image)
    assert actual.shape == (1, 4, 6, 8)
    assert relative_error(actual, expected) <= TOLERANCE


def test_vae_decode_matches_diffusers(models):
    ours, (_, vae, _) = models
    latent = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vae.decode(latent).sample
    actual = ours.vae.decode(latent)
    assert actual.shape == (1, 3, 48, 64)
    assert relative_error(actual, expected) <= TOLERANCE


def test_text_encoder_matches_transformers_clip(models):
    ours, (_, _, text_encoder) = models
    ids = ours.tokenizer(["a red circle on a white background", "", "an astronaut riding a horse, 4k, trending"])
    with torch.no_grad():
        expected = text_encoder(ids).last_hidden_state
    actual = ours.text_encoder(ids)
    assert actual.shape == expected.shape == (3, 77, 128)
    assert relative_error(actual, expected) <= TOLERANCE


def test_bf16_unet_stays_close_to_fp32(tiny_checkpoint, models, tiny_config):
    """The default dtype on AMX CPUs is bf16: it must compute the same function, to bf16 precision."""
    fp32, _ = models
    bf16 = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, tiny_config.unet.context_dim, generator=generator)
    with torch.no_grad():
        assert relative_error(bf16.unet(x, 500, context), fp32.unet(x, 500, context)) < 3e-2
