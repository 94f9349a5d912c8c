"""DDPM sampling against diffusers' StableDiffusionPipeline / Img2ImgPipeline on the same file, seed and scheduler."""


import numpy as np
import pytest
import torch

from nodegraph.sd import load_checkpoint, sample
from nodegraph.sd.ddpm import kept_timesteps, leading_timesteps
from parity import psnr, sd_scheduler, to_uint8
from reference import reference_models, reference_tokenizer

PROMPT, NEGATIVE = "a red circle on a white background", "blurry"
HEIGHT, WIDTH = 48, 64  # non-square, latent 6x8


@pytest.fixture(scope="module")
def ours(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def pipeline_parts(tiny_checkpoint, tiny_config):
    unet, vae, text_encoder = reference_models(tiny_checkpoint, tiny_config)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=reference_tokenizer(), scheduler=sd_scheduler(),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def run_ours(sd, seed, steps, cfg, denoise=1.0, start=None):
    positive, negative = sd.encode_prompt([PROMPT]), sd.encode_prompt([NEGATIVE])
    latent = start if start is not None else torch.zeros(1, 4, HEIGHT // 8, WIDTH // 8)
    seen = []
    result = sample(sd, positive, negative, latent, seed=seed, steps=steps, cfg=cfg, denoise=denoise,
                    callback=lambda step, total, x: seen.append((step, total)))
    return to_uint8(sd.vae.decode(result)), seen


def test_scheduler_timesteps_are_those_sd_ships():
    assert leading_timesteps(50)[:3] == [981, 961, 941] and leading_timesteps(50)[-1] == 1
    scheduler = sd_scheduler()
    for steps in (1, 6, 20, 50):
        scheduler.set_timesteps(steps)
        assert leading_timesteps(steps) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("steps,strength", [(6, 0.5), (10, 0.75), (20, 0.3), (7, 1.0)])
def test_partial_denoise_keeps_the_timesteps_diffusers_strength_keeps(steps, strength):
    scheduler = sd_scheduler()
    scheduler.set_timesteps(steps)
    kept = min(int(steps * strength), steps)
    assert kept_timesteps(steps, strength) == scheduler.timesteps[steps - kept:].tolist()


def test_txt2img_with_cfg_matches_diffusers_pipeline(ours, pipeline_parts):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(**pipeline_parts)
    expected = pipe(PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=6, guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(1234), output_type="pt").images
    expected = to_uint8(expected * 2 - 1)
    actual, seen = run_ours(ours, seed=1234, steps=6, cfg=7.5)
    assert seen == [(i, 6) for i in range(1, 7)]
    assert actual.shape == expected.shape == (1, HEIGHT, WIDTH, 3)
    assert expected.std() > 10, "the reference image should not be flat"
    assert psnr(actual, expected) >= 40


def test_img2img_denoise_matches_diffusers_strength(ours, pipeline_parts):
    from diffusers import StableDiffusionImg2ImgPipeline
    image = torch.rand(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(5)) * 2 - 1
    start = ours.vae.encode(image)
    pipe = StableDiffusionImg2ImgPipeline(**pipeline_parts)
    # A 4-channel image is taken as an already scaled latent, so both start from the same posterior mean.
    expected = pipe(PROMPT, image=start * ours.latent_scale, negative_prompt=NEGATIVE, strength=0.5, num_inference_steps=6,
                    guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(99), output_type="pt").images
    expected = to_uint8(expected * 2 - 1)
    actual, seen = run_ours(ours, seed=99, steps=6, cfg=7.5, denoise=0.5, start=start)
    assert seen == [(i, 3) for i in range(1, 4)]
    assert expected.std() > 10
    assert psnr(actual, expected) >= 40


def test_one_seed_gives_one_image_and_another_seed_another(ours):
    first, _ = run_ours(ours, seed=7, steps=3, cfg=5.0)
    again, _ = run_ours(ours, seed=7, steps=3, cfg=5.0)
    other, _ = run_ours(ours, seed=8, steps=3, cfg=5.0)
    assert np.array_equal(first, again)
    assert psnr(first, other) < 30


def test_denoise_that_runs_no_step_is_refused(ours):
    with pytest.raises(ValueError, match="runs no step"):
        run_ours(ours, seed=1, steps=4, cfg=5.0, denoise=0.2, start=torch.zeros(1, 4, 6, 8))
