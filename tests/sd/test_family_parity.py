"""Whole SD 2.x and SDXL checkpoints, loaded by load_checkpoint, against diffusers and transformers on the same file.

Each tiny file (tests/checkpoints.py, the real key layouts) is read twice: by our loader, and by diffusers' own
single-file conversion functions into its UNet, VAE and transformers' text models (family_reference.py). Every part
is compared at fp32 as the pipelines use it (text: the pipelines' encode_prompt against our prompt encoding), and
whole pictures: diffusers' pipelines with Euler on ComfyUI's sigmas and the same starting noise against our KSampler
path, decoded, at >= 40 dB. SD 2.x comes as eps and as v-prediction files (the loader tells them apart as ComfyUI
does); SDXL's size conditioning is ComfyUI's default (the image size for both sizes, crop 0), diffusers' add_time_ids
when original_size and target_size are left to default.
"""

import dataclasses
import functools
import math

import pytest
import torch
from safetensors.torch import load_file

from checkpoints import write_family_checkpoint
from family_reference import (SCALE_FACTOR, comfy_euler, reference_parts, refiner_pipeline, sd2_pipeline,
                              sdxl_pipeline, text_encoder)
from nodegraph.sd import load_checkpoint, sample
from nodegraph.sd.adm import refiner_adm, sdxl_adm
from nodegraph.sd.conditioning import encode_text
from nodegraph.sd.prompt import encode_prompt
from nodegraph.sd.sampling import initial_noise, ksampler_sigmas, sample_ksampler
from parity import psnr, relative_error, sd_scheduler, to_uint8

# diffusers' schedulers hand torch tensors to numpy in a way numpy 2 warns about: theirs, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TOLERANCE = 1e-4
LATENT_TOLERANCE = 1e-5  # a whole sampling run's latent, as tests/sd/test_ksampler_parity.py holds SD 1.x's
PROMPT, NEGATIVE = "a red circle on a white background", "blurry, low quality"
# file variant -> (family, write_family_checkpoint options, our family's label)
VARIANTS = {
    "sd2": ("sd2", {}, "SD 2.x"),
    "sd2_v": ("sd2", {"v_prediction": True}, "SD 2.x (v-prediction)"),
    "sdxl": ("sdxl", {}, "SDXL"),
    "sdxl_refiner": ("sdxl_refiner", {}, "SDXL refiner"),
}
PARTS = ["sd2", "sdxl", "sdxl_refiner"]  # sd2_v is sd2's weights but one norm bias: its parts are sd2's


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """variant -> (our loaded checkpoint, diffusers' parts of the same file, the file's path), made once each."""
    folder = tmp_path_factory.mktemp("families")

    @functools.cache
    def get(variant):
        family, options, _ = VARIANTS[variant]
        path = write_family_checkpoint(folder / f"{variant}.safetensors", family, seed=0, **options)
        return load_checkpoint(path, device="cpu", dtype=torch.float32), reference_parts(path, family), path

    return get


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_loader_tells_each_family(files, variant):
    sd, _, _ = files(variant)
    family, _, label = VARIANTS[variant]
    assert sd.family.label == label
    assert sd.latent_scale == SCALE_FACTOR[family]
    assert sd.schedule.prediction == ("v" if variant == "sd2_v" else "eps")


# --- each part, as the pipelines use it --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", PARTS)
def test_unet_matches_diffusers(files, variant):
    sd, theirs, _ = files(variant)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 12, generator=generator)
    t = torch.tensor([811.0, 37.0])
    context = torch.randn(2, 77, sd.unet.config.context_dim, generator=generator)
    y, added = None, None
    if variant != "sd2":  # SDXL's ADM at its real width: bigG's 1280-wide pooled output and 256 per number
        pooled = torch.randn(2, 1280, generator=generator)
        if variant == "sdxl":
            numbers = [1024.0, 832.0, 48.0, 16.0, 896.0, 1152.0]  # all different, so their order shows
            y = sdxl_adm(pooled, *numbers)
        else:
            numbers = [768.0, 1344.0, 32.0, 0.0, 2.5]
            y = refiner_adm(pooled, *numbers)
        added = {"text_embeds": pooled, "time_ids": torch.tensor([numbers] * 2)}
    with torch.no_grad():
        expected = theirs["unet"](x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        actual = sd.unet(x, t, context, y=y)
    error = relative_error(actual, expected)
    print(f"{variant} UNet: relative error {error:.1e}")
    assert error <= TOLERANCE


@pytest.mark.parametrize("variant", PARTS)
def test_vae_matches_diffusers_with_the_familys_scale(files, variant):
    sd, theirs, _ = files(variant)
    vae = theirs["vae"]
    assert sd.latent_scale == vae.config.scaling_factor
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2)) * 2 - 1
    latent = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        errors = (relative_error(sd.vae.encode(image), vae.encode(image).latent_dist.mean),
                  relative_error(sd.vae.decode(latent), vae.decode(latent).sample))
    print(f"{variant} VAE: encode {errors[0]:.1e}, decode {errors[1]:.1e}")
    assert max(errors) <= TOLERANCE


def test_sd2_text_matches_the_pipelines_encode_prompt(files):
    """SD 2.x reads OpenCLIP-H at layer -2 with the final norm, padded with 0: diffusers' SD 2 text encoder is the
    file's encoder without its last block, and its last_hidden_state (normed) is what the pipeline conditions on."""
    sd, theirs, path = files("sd2")
    pipe = sd2_pipeline(theirs, comfy_euler())
    with torch.no_grad():
        expected, expected_negative = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    context, pooled = encode_prompt(sd, PROMPT)
    negative, _ = encode_prompt(sd, NEGATIVE)
    # the same from the whole file's encoder, as clip_skip=2 would read it: final_layer_norm(hidden_states[-2])
    whole = text_encoder(load_file(str(path)), "open_clip_h", "cond_stage_model.model.", keep_all_layers=True)
    with torch.no_grad():
        ids = theirs["tokenizer"](PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
        skip_2 = whole.final_layer_norm(whole(ids, output_hidden_states=True).hidden_states[-2])
    errors = [relative_error(context, expected), relative_error(negative, expected_negative),
              relative_error(context, skip_2)]
    print(f"SD 2.x text: relative errors {', '.join(f'{e:.1e}' for e in errors)}")
    assert context.shape == (1, 77, 128) and pooled.shape == (1, 128)
    assert ids[0, -1] == 0  # the reference pads with "!"
    assert max(errors) <= TOLERANCE


@pytest.mark.parametrize("variant", ["sdxl", "sdxl_refiner"])
def test_sdxl_text_matches_the_pipelines_encode_prompt(files, variant):
    """SDXL: CLIP-L and bigG at hidden_states[-2] without the final norm, side by side; pooled: bigG's projected
    state. The refiner: bigG alone."""
    sd, theirs, _ = files(variant)
    pipe = (sdxl_pipeline if variant == "sdxl" else refiner_pipeline)(theirs, comfy_euler())
    with torch.no_grad():
        expected, expected_negative, expected_pooled, expected_negative_pooled = pipe.encode_prompt(
            PROMPT, negative_prompt=NEGATIVE, device="cpu")
    context, pooled = encode_prompt(sd, PROMPT)
    negative, negative_pooled = encode_prompt(sd, NEGATIVE)
    errors = [relative_error(context, expected), relative_error(pooled, expected_pooled),
              relative_error(negative, expected_negative), relative_error(negative_pooled, expected_negative_pooled)]
    print(f"{variant} text: relative errors {', '.join(f'{e:.1e}' for e in errors)}")
    assert context.shape == (1, 77, 64 + 128 if variant == "sdxl" else 128) and pooled.shape == (1, 1280)
    assert max(errors) <= TOLERANCE
    # bigG's padding reaches the states after EOS: padded with EOS instead of "!", the reference differs
    theirs["tokenizer_2"].pad_token = theirs["tokenizer_2"].eos_token
    try:
        with torch.no_grad():
            eos_padded = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE, device="cpu")[0]
    finally:
        theirs["tokenizer_2"].pad_token = "!"
    assert relative_error(context, eos_padded) > 1e-2


# --- whole pictures: diffusers' pipelines against our KSampler ------------------------------------------------------


def picture_and_latent(pipe, height: int, width: int, **options):
    """(the pipeline's decoded picture as uint8, its last latent in its scaled space)."""
    last = {}

    def keep_latents(pipe, step, t, tensors):
        last["latents"] = tensors["latents"]
        return tensors

    with torch.no_grad():
        images = pipe(PROMPT, negative_prompt=NEGATIVE, height=height, width=width, output_type="pt",
                      callback_on_step_end=keep_latents, **options).images
    return to_uint8(images * 2 - 1), last["latents"]


def pipeline_picture(pipe, sd, seed: int, steps: int, cfg: float, height: int, width: int, **options):
    """(the pipeline's picture, its last latent in raw VAE space): Euler along ComfyUI's sigmas from the seed's noise
    as ComfyUI draws it."""
    sigmas = ksampler_sigmas(sd.schedule, "normal", steps)
    noise = initial_noise((1, 4, height // 8, width // 8), seed)
    picture, latent = picture_and_latent(pipe, height, width, sigmas=sigmas.tolist(), guidance_scale=cfg,
                                         latents=noise, **options)
    scheduler = pipe.scheduler
    assert torch.equal(scheduler.sigmas, sigmas) and len(scheduler.timesteps) == steps
    assert math.isclose(float(scheduler.init_noise_sigma), math.sqrt(1 + float(sigmas[0]) ** 2), rel_tol=1e-6)
    return picture, latent / sd.latent_scale


def our_picture(sd, seed: int, steps: int, cfg: float, start: torch.Tensor, denoise: float = 1.0):
    """ComfyUI's CLIPTextEncode -> KSampler (euler, normal) -> VAEDecode; `start` the raw latent to start from."""
    positive, negative = encode_text(sd, PROMPT), encode_text(sd, NEGATIVE)
    latent = sample_ksampler(sd, positive, negative, start, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                             scheduler="normal", denoise=denoise).latent
    return to_uint8(sd.vae.decode(latent)), latent


def check_pictures(variant, actual, expected, latent, expected_latent) -> float:
    error, quality = relative_error(latent, expected_latent), psnr(actual, expected)
    print(f"{variant} picture: latent relative error {error:.1e}, PSNR {quality:.1f} dB")
    assert actual.shape == expected.shape
    assert expected.std() > 10, "the reference picture should not be flat"
    assert error <= LATENT_TOLERANCE
    assert quality >= 40
    return error


@pytest.mark.parametrize("variant,height,width", [("sd2", 64, 64), ("sd2_v", 64, 64), ("sdxl", 64, 96)])
def test_txt2img_pictures_match_the_diffusers_pipeline(files, variant, height, width):
    """SDXL at a non-square size, whose size conditioning (diffusers' add_time_ids: original_size = target_size =
    (height, width), crop 0) would show a swap of the two."""
    sd, theirs, _ = files(variant)
    scheduler = comfy_euler(sd.schedule.prediction)
    pipe = sdxl_pipeline(theirs, scheduler) if variant == "sdxl" else sd2_pipeline(theirs, scheduler)
    expected, expected_latent = pipeline_picture(pipe, sd, seed=1234, steps=6, cfg=6.0, height=height, width=width)
    actual, latent = our_picture(sd, seed=1234, steps=6, cfg=6.0, start=torch.zeros(1, 4, height // 8, width // 8))
    assert actual.shape == (1, height, width, 3)
    check_pictures(variant, actual, expected, latent, expected_latent)
    if variant == "sdxl":  # the sizes matter beyond the tolerance: swapped, the latent moves ~5e-4
        _, swapped = pipeline_picture(pipe, sd, seed=1234, steps=6, cfg=6.0, height=height, width=width,
                                      original_size=(width, height), target_size=(width, height))
        assert relative_error(latent, swapped) > 10 * LATENT_TOLERANCE


def test_refiner_img2img_matches_the_diffusers_pipeline(files):
    """The refiner as it is used: half a schedule over a picture's latent. Its size conditioning is the latent's size
    x 8, crop 0, and aesthetic scores 6 (positive) and 2.5 (negative): ComfyUI's and diffusers' defaults alike.
    diffusers keeps the last int(steps * strength) of its steps, as ComfyUI's denoise keeps the last `steps` of
    int(steps / denoise): given ComfyUI's 12-step schedule at strength 0.5 both run the same 6 steps."""
    sd, theirs, _ = files("sdxl_refiner")
    height, width = 64, 96
    start = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(5))
    sigmas = ksampler_sigmas(sd.schedule, "normal", 12)
    assert torch.equal(sigmas[-7:], ksampler_sigmas(sd.schedule, "normal", 6, denoise=0.5))
    pipe = refiner_pipeline(theirs, comfy_euler())
    # a 4-channel image is taken as an already scaled latent; the noise is the generator's first draw, the seed's
    expected, expected_latent = picture_and_latent(pipe, height, width, image=start * sd.latent_scale, strength=0.5,
                                                   sigmas=sigmas.tolist(), guidance_scale=6.0,
                                                   generator=torch.Generator("cpu").manual_seed(77))
    actual, latent = our_picture(sd, seed=77, steps=6, cfg=6.0, start=start, denoise=0.5)
    assert len(pipe.scheduler.timesteps[pipe.scheduler.begin_index:]) == 6
    check_pictures("sdxl_refiner", actual, expected, latent, expected_latent / sd.latent_scale)
    # the aesthetic scores matter beyond the tolerance: swapped, the latent moves
    _, swapped = picture_and_latent(pipe, height, width, image=start * sd.latent_scale, strength=0.5,
                                    sigmas=sigmas.tolist(), guidance_scale=6.0, aesthetic_score=2.5,
                                    negative_aesthetic_score=6.0, generator=torch.Generator("cpu").manual_seed(77))
    moved = relative_error(latent, swapped / sd.latent_scale)
    print(f"refiner with swapped aesthetic scores: latent relative error {moved:.1e}")
    assert moved > 10 * LATENT_TOLERANCE


@pytest.mark.parametrize("variant", ["sd2_v", "sdxl"])
def test_our_ddpm_sampler_runs_v_prediction_and_sdxl_as_diffusers_ddpm(files, variant):
    """DDPMSample's sampler (nodegraph.sd.ddpm) on a v-prediction SD 2.x model (eps read back from v) and on SDXL
    (each cond's size conditioning as y), against the pipeline with diffusers' DDPMScheduler on the same seed."""
    sd, theirs, _ = files(variant)
    scheduler = sd_scheduler()
    scheduler.register_to_config(prediction_type={"eps": "epsilon", "v": "v_prediction"}[sd.schedule.prediction])
    pipe = sdxl_pipeline(theirs, scheduler) if variant == "sdxl" else sd2_pipeline(theirs, scheduler)
    height, width = 64, 96
    expected, _ = picture_and_latent(pipe, height, width, num_inference_steps=6, guidance_scale=6.0,
                                     generator=torch.Generator("cpu").manual_seed(1234))
    latent = sample(sd, encode_text(sd, PROMPT), encode_text(sd, NEGATIVE), torch.zeros(1, 4, height // 8, width // 8),
                    seed=1234, steps=6, cfg=6.0)
    quality = psnr(to_uint8(sd.vae.decode(latent)), expected)
    print(f"{variant} DDPM picture: PSNR {quality:.1f} dB")
    assert expected.std() > 10 and quality >= 40


def test_our_ddpm_sampler_refuses_schedules_it_cannot_step(files):
    sd, _, _ = files("sd2")
    for schedule in (sd.schedule.with_prediction("x0"), sd.schedule.with_prediction("v", zsnr=True)):
        with pytest.raises(ValueError, match="DDPM sampling runs eps and v-prediction models on SD's training "
                                             "schedule.*sample it with KSampler"):
            sample(dataclasses.replace(sd, schedule=schedule), encode_text(sd, PROMPT), encode_text(sd, NEGATIVE),
                   torch.zeros(1, 4, 8, 8), seed=0, steps=2, cfg=6.0)
