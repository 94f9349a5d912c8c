"""LoRA'd models against diffusers' load_lora_weights + fuse_lora on the same checkpoint and LoRA file, for the
formats diffusers loads for SD 1.x: kohya files with diffusers' names (with one alpha for all modules: diffusers
mis-scales per-module alphas, see REFERENCE.md; test_lora_formats.py checks those against the formula) and peft
files. The UNet, the text encoder and a whole txt2img run agree."""

import dataclasses
import os
import warnings

import pytest
import torch

import lora_files as lf
from nodegraph.sd import load_checkpoint, sample
from nodegraph.sd.lora import match_lora, patch_module, read_lora_file
from parity import psnr, relative_error, sd_scheduler, to_uint8
from reference import reference_models, reference_tokenizer

try:
    import peft  # noqa: F401  (diffusers' load_lora_weights needs peft >= 0.17)
except ImportError as error:
    if os.environ.get("CI") == "true":  # skipped locally without it; never silently on CI
        raise AssertionError(f"peft is needed for the LoRA parity tests under CI: {error}") from error
    pytest.skip("diffusers' load_lora_weights needs peft >= 0.17", allow_module_level=True)

PROMPT, NEGATIVE = "a red circle on a white background", "blurry"
HEIGHT, WIDTH = 48, 64
STRENGTH = 0.7
TOLERANCE = 1e-5


FORMATS = {
    "kohya, diffusers names, one alpha": ("kohya", lf.kohya_diffusers_name, 2.0),
    "peft, unet./text_encoder. prefixes": ("peft", lf.peft_name, None),
}


@pytest.fixture(scope="module")
def lora_file(tiny_checkpoint, tmp_path_factory, request):
    style, name, alpha = FORMATS[request.param]
    weights = lf.base_weights(tiny_checkpoint)
    unet_names = lf.diffusers_unet_names(tiny_checkpoint)
    generator = torch.Generator().manual_seed(11)
    entries = {name(part, layer, unet_names): lf.lora(weights[part][layer], generator, rank=4, alpha=alpha)
               for part, layers in lf.targets(weights).items() for layer in layers}
    return lf.write_lora(tmp_path_factory.mktemp("loras") / f"{style}.safetensors", entries, style=style)


@pytest.fixture(scope="module")
def both(tiny_checkpoint, tiny_config, lora_file):
    """(our model with the LoRA, diffusers' pipeline with it fused, our model without it)."""
    from diffusers import StableDiffusionPipeline
    base = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)
    patches = match_lora(lora_file, read_lora_file(lora_file), base.unet, base.text_encoder)
    assert patches.unmatched == ()
    ours = dataclasses.replace(base.with_text_encoder(patch_module(base.text_encoder, patches.text_encoder, STRENGTH)),
                               unet=patch_module(base.unet, patches.unet, STRENGTH))
    unet, vae, text_encoder = reference_models(tiny_checkpoint, tiny_config)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=reference_tokenizer(),
                                   scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.load_lora_weights(str(lora_file))
        pipe.fuse_lora(lora_scale=STRENGTH)
    return ours, pipe, base


@pytest.mark.parametrize("lora_file", list(FORMATS), indirect=True)
def test_patched_unet_matches_diffusers_fused_unet(both, tiny_config):
    ours, pipe, base = both
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 8, generator=generator)
    context = torch.randn(2, 77, tiny_config.unet.context_dim, generator=generator)
    t = torch.tensor([981, 1])
    with torch.no_grad():
        expected = pipe.unet(x, t, encoder_hidden_states=context).sample
        actual = ours.unet(x, t, context)
        unpatched = base.unet(x, t, context)
    assert relative_error(unpatched, expected) > 0.05, "the LoRA should change the UNet's answer"
    assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize("lora_file", list(FORMATS), indirect=True)
def test_patched_text_encoder_matches_diffusers_fused_text_encoder(both):
    ours, pipe, base = both
    ids = ours.tokenizer([PROMPT, "", "an astronaut riding a horse"])
    with torch.no_grad():
        expected = pipe.text_encoder(ids).last_hidden_state
        actual = ours.text_encoder(ids)
        unpatched = base.text_encoder(ids)
    assert relative_error(unpatched, expected) > 0.05, "the LoRA should change the encoding"
    assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize("lora_file", list(FORMATS), indirect=True)
def test_txt2img_with_the_lora_matches_diffusers_pipeline(both):
    """Same seed, scheduler and steps: the sampled latents agree (the tiny model's pictures are mostly its VAE's, so
    the latents are where the LoRA shows), and so do the pictures."""
    ours, pipe, base = both
    run = dict(negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=6, guidance_scale=7.5)
    expected = pipe(PROMPT, **run, generator=torch.Generator("cpu").manual_seed(1234), output_type="latent").images
    expected = expected / pipe.vae.config.scaling_factor  # diffusers returns scaled latents; ours are raw VAE space
    pictures = pipe(PROMPT, **run, generator=torch.Generator("cpu").manual_seed(1234), output_type="pt").images

    def ours_latent(sd):
        return sample(sd, sd.encode_prompt([PROMPT]), sd.encode_prompt([NEGATIVE]),
                      torch.zeros(1, 4, HEIGHT // 8, WIDTH // 8), seed=1234, steps=6, cfg=7.5)

    latent = ours_latent(ours)
    assert relative_error(ours_latent(base), expected) > 0.05, "without the LoRA the latent should differ"
    assert relative_error(latent, expected) <= 1e-4
    assert psnr(to_uint8(ours.vae.decode(latent)), to_uint8(pictures * 2 - 1)) >= 40
