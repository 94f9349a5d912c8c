"""ComfyUI's KSampler conventions, one test each: change a convention and its test fails."""

import math

import pytest
import torch

from nodegraph.sd import sample
from nodegraph.sd.sampling import (DiscreteSchedule, GuidedDenoiser, Sampler, get_sampler, initial_noise,
                                   ksampler_sigmas, sample_along, sample_ksampler, scheduler_sigmas, step_noise,
                                   step_range)
from nodegraph.sd.sampling.noise import BrownianNoise
from nodegraph.sd.sampling.samplers import SAMPLERS

SCHEDULE = DiscreteSchedule()
SHAPE = (1, 4, 8, 8)


def probe() -> tuple[Sampler, dict]:
    """A sampler that runs no step and records the x and sigmas it was started with."""
    seen = {}

    def record(model, x, sigmas, ctx):
        seen.update(x=x.clone(), sigmas=sigmas.clone())
        return x

    return Sampler("probe", record), seen


class RecordingUNet:
    """A stand-in UNet: a fixed function of (x, t, context), recording what it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context):
        self.calls.append((x.clone(), t.clone(), context.clone()))
        return torch.tanh(x * 0.5 + t.reshape(-1, 1, 1, 1) / 1000 + context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1))


# --- noise -------------------------------------------------------------------------------------------------------


def test_initial_noise_is_cpu_randn_of_the_seed_for_the_whole_batch():
    expected = torch.randn((2,) + SHAPE[1:], generator=torch.Generator().manual_seed(42))
    assert torch.equal(initial_noise((2,) + SHAPE[1:], 42), expected)


def test_batch_index_gives_each_item_the_noise_of_its_index():
    generator = torch.Generator().manual_seed(7)
    draws = [torch.randn((1,) + SHAPE[1:], generator=generator) for _ in range(4)]
    assert torch.equal(initial_noise((2,) + SHAPE[1:], 7, batch_index=[3, 1]), torch.cat([draws[3], draws[1]]))


def test_ancestral_step_noise_comes_from_seed_plus_one_on_the_cpu():
    x = torch.zeros(SHAPE)
    noise = step_noise(x, 5)
    generator = torch.Generator().manual_seed(6)
    first, second = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    assert torch.equal(noise(None, None), first) and torch.equal(noise(None, None), second)


def test_sde_noise_is_a_brownian_tree_over_the_positive_sigmas_seeded_with_the_seed():
    import torchsde
    x = torch.zeros(SHAPE)
    sigmas = scheduler_sigmas(SCHEDULE, "karras", 5)
    ours = BrownianNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=11)
    tree = torchsde.BrownianTree(sigmas[-2], torch.zeros(SHAPE), sigmas[0], entropy=11)
    high, low = sigmas[1], sigmas[2]
    expected = tree(low, high) / (high - low).sqrt() * -1  # stepping down in sigma: the increment's sign flips
    torch.testing.assert_close(ours(high, low), expected, rtol=1e-6, atol=1e-6)


def test_brownian_noise_answered_ahead_is_the_noise_asked_one_by_one():
    x = torch.zeros(SHAPE)
    sigmas = scheduler_sigmas(SCHEDULE, "karras", 6)
    queries = [(sigmas[i], sigmas[i + 1]) for i in range(5)]
    one_by_one = BrownianNoise(x, sigmas[-2], sigmas[0], seed=3)
    expected = [one_by_one(*query) for query in queries]
    ahead = BrownianNoise(x, sigmas[-2], sigmas[0], seed=3)
    ahead.prefetch(queries)
    assert all(torch.equal(ahead(*query), want) for query, want in zip(queries, expected))
    assert not ahead._planned
    off_plan = BrownianNoise(x, sigmas[-2], sigmas[0], seed=3)
    off_plan.prefetch(queries[1:])  # asked for another query first: the worker stops, the answer is still right
    assert torch.equal(off_plan(*queries[0]), expected[0]) and off_plan._worker is None


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_samplers_plan_every_brownian_query_they_make(sd, conds, name, monkeypatch):
    asked, unplanned = [], []
    real_call = BrownianNoise.__call__

    def watched(self, sigma, sigma_next):
        asked.append(1)
        if not (self._planned and self._planned[0] == (float(sigma), float(sigma_next))):
            unplanned.append((float(sigma), float(sigma_next)))
        return real_call(self, sigma, sigma_next)

    monkeypatch.setattr(BrownianNoise, "__call__", watched)
    sample(sd, *conds, torch.zeros(SHAPE), seed=2, steps=5, cfg=5.0, sampler_name=name, scheduler="karras")
    assert asked and unplanned == []


# --- the start of sampling ---------------------------------------------------------------------------------------


def test_text_to_image_starts_from_noise_scaled_by_sqrt_one_plus_sigma_max_squared(sd, conds):
    sampler, seen = probe()
    sigmas = scheduler_sigmas(SCHEDULE, "normal", 10)
    sample_along(sd, *conds, torch.zeros(SHAPE), sigmas, sampler=sampler, seed=3, cfg=7.0)
    expected = initial_noise(SHAPE, 3) * math.sqrt(1 + float(sigmas[0]) ** 2)
    torch.testing.assert_close(seen["x"], expected, rtol=1e-6, atol=0)


def test_partial_denoise_starts_from_the_scaled_latent_plus_noise_times_the_first_sigma(sd, conds):
    sampler, seen = probe()
    picture = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sigmas = ksampler_sigmas(SCHEDULE, "normal", 10, denoise=0.6)
    sample_along(sd, *conds, picture, sigmas, sampler=sampler, seed=3, cfg=7.0)
    expected = initial_noise(SHAPE, 3) * sigmas[0] + picture * sd.latent_scale
    torch.testing.assert_close(seen["x"], expected, rtol=1e-6, atol=1e-7)


def test_without_added_noise_the_latent_starts_as_it_is(sd, conds):
    sampler, seen = probe()
    picture = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sample_along(sd, *conds, picture, scheduler_sigmas(SCHEDULE, "normal", 10), sampler=sampler, seed=3, cfg=7.0,
                 add_noise=False)
    torch.testing.assert_close(seen["x"], picture * sd.latent_scale)


# --- sigmas ------------------------------------------------------------------------------------------------------


def test_denoise_keeps_the_last_steps_of_a_longer_schedule():
    assert torch.equal(ksampler_sigmas(SCHEDULE, "karras", 10, denoise=0.6), scheduler_sigmas(SCHEDULE, "karras", 16)[-11:])
    assert torch.equal(ksampler_sigmas(SCHEDULE, "normal", 20, denoise=1.0), scheduler_sigmas(SCHEDULE, "normal", 20))


def test_dpm_2_and_uni_pc_drop_the_penultimate_sigma_of_one_step_more():
    discarding = {name for name, sampler in SAMPLERS.items() if sampler.discards_penultimate_sigma}
    assert discarding == {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
    longer = scheduler_sigmas(SCHEDULE, "normal", 11)
    sigmas = ksampler_sigmas(SCHEDULE, "normal", 10, discard_penultimate_sigma=True)
    assert len(sigmas) == 11 and torch.equal(sigmas, torch.cat([longer[:-2], longer[-1:]]))


def test_a_step_range_with_leftover_noise_stops_above_zero():
    sigmas = scheduler_sigmas(SCHEDULE, "normal", 20)
    assert torch.equal(step_range(sigmas, 0, 12), sigmas[:13]) and step_range(sigmas, 0, 12)[-1] > 0
    denoised = step_range(sigmas, 0, 12, force_full_denoise=True)
    assert denoised[-1] == 0 and torch.equal(denoised[:-1], sigmas[:12]) and sigmas[12] > 0  # the input is untouched
    assert torch.equal(step_range(sigmas, 12, 10000), sigmas[12:])
    with pytest.raises(ValueError, match="no step"):
        step_range(sigmas, 20, 10000)


def test_gpu_sde_samplers_keep_their_brownian_tree_on_the_latents_device(sd, conds):
    latent = torch.zeros(SHAPE)
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        on_cpu = sample(sd, *conds, latent, seed=2, steps=3, cfg=5.0, sampler_name=name, scheduler="karras")
        on_device = sample(sd, *conds, latent, seed=2, steps=3, cfg=5.0, sampler_name=f"{name}_gpu",
                           scheduler="karras")
        assert torch.equal(on_cpu, on_device)  # the latent is on the CPU here, so is the tree
    x = torch.zeros(SHAPE)
    assert BrownianNoise(x, 0.1, 10.0, seed=1, on_cpu=False).tree_device == x.device


def test_ddim_is_euler_with_fresh_noise_for_inpainting():
    assert get_sampler("ddim").step is get_sampler("euler").step
    assert get_sampler("ddim").random_inpaint_noise and not get_sampler("euler").random_inpaint_noise


# --- the model call ----------------------------------------------------------------------------------------------


def test_the_unet_sees_x_over_sqrt_sigma_squared_plus_one_at_the_nearest_timestep():
    unet = RecordingUNet()
    positive = torch.randn(1, 77, 16)
    denoiser = GuidedDenoiser(unet, SCHEDULE, positive, None, cfg=1.0)
    x, sigma = torch.randn(2, 4, 8, 8), torch.full((2,), 3.0)
    denoised = denoiser(x, sigma)
    (seen_x, seen_t, _), = unet.calls
    torch.testing.assert_close(seen_x, x / math.sqrt(10.0))
    assert seen_t.tolist() == [SCHEDULE.timestep(torch.tensor(3.0)).item()] * 2
    torch.testing.assert_close(denoised, x - unet(seen_x, seen_t, positive.expand(2, -1, -1)) * 3.0)


def test_cfg_mixes_the_denoised_estimates_of_both_prompts():
    unet = RecordingUNet()
    positive, negative = torch.randn(1, 77, 16), torch.randn(1, 77, 16)
    x, sigma = torch.randn(1, 4, 8, 8), torch.full((1,), 2.0)
    guided = GuidedDenoiser(unet, SCHEDULE, positive, negative, cfg=6.5)(x, sigma)
    (batched_x, batched_t, contexts), = unet.calls
    assert batched_x.shape[0] == 2 and torch.equal(contexts, torch.cat([positive, negative]))
    cond = GuidedDenoiser(unet, SCHEDULE, positive, None, cfg=1.0)(x, sigma)
    uncond = GuidedDenoiser(unet, SCHEDULE, negative, None, cfg=1.0)(x, sigma)
    torch.testing.assert_close(guided, uncond + (cond - uncond) * 6.5)


def test_cfg_one_never_evaluates_the_negative_prompt():
    unet = RecordingUNet()
    GuidedDenoiser(unet, SCHEDULE, torch.randn(1, 77, 16), torch.randn(1, 77, 16), cfg=1.0)(
        torch.randn(3, 4, 8, 8), torch.full((3,), 1.0))
    (seen_x, _, contexts), = unet.calls
    assert seen_x.shape[0] == 3 and contexts.shape[0] == 3


def test_prompts_of_different_lengths_batch_at_their_common_length():
    unet = RecordingUNet()
    GuidedDenoiser(unet, SCHEDULE, torch.randn(1, 154, 16), torch.randn(1, 77, 16), cfg=5.0)(
        torch.randn(1, 4, 8, 8), torch.full((1,), 1.0))
    assert unet.calls[0][2].shape == (2, 154, 16)


def test_our_denoiser_is_k_diffusions_compvis_denoiser(sd, conds):
    from kdiffusion_reference import kdiffusion_sampling
    kdiffusion_sampling()
    from k_diffusion.external import CompVisDenoiser  # imported once the package is registered

    class CompVisModel:
        alphas_cumprod = SCHEDULE.alphas_cumprod

        def apply_model(self, x, t, cond):
            return sd.unet(x, t, cond)

    reference = CompVisDenoiser(CompVisModel(), quantize=True)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * 3
    ours = GuidedDenoiser(sd.unet, SCHEDULE, conds[0], None, cfg=1.0)
    for sigma in (14.6, 3.3, 0.5, 0.031):
        sigma = torch.full((1,), sigma)
        expected = reference(x, sigma, cond=conds[0])
        torch.testing.assert_close(ours(x, sigma), expected, rtol=1e-5, atol=1e-5)


# --- whole runs --------------------------------------------------------------------------------------------------


def test_a_run_split_into_two_step_ranges_equals_the_whole_run(sd, conds):
    common = dict(seed=9, steps=10, cfg=5.0, sampler_name="dpmpp_2m", scheduler="karras")
    whole = sample_ksampler(sd, *conds, torch.zeros(SHAPE), **common).latent
    first = sample_ksampler(sd, *conds, torch.zeros(SHAPE), end_step=6, **common).latent
    rest = sample_ksampler(sd, *conds, first, start_step=6, add_noise=False, **common).latent
    assert not torch.allclose(first, whole, atol=1e-2), "the first part keeps its leftover noise"
    # dpmpp_2m's second half restarts its multistep history, so only euler-like samplers meet exactly
    whole_euler = sample_ksampler(sd, *conds, torch.zeros(SHAPE), **{**common, "sampler_name": "euler"}).latent
    first = sample_ksampler(sd, *conds, torch.zeros(SHAPE), end_step=6, **{**common, "sampler_name": "euler"}).latent
    rest = sample_ksampler(sd, *conds, first, start_step=6, add_noise=False,
                           **{**common, "sampler_name": "euler"}).latent
    torch.testing.assert_close(rest, whole_euler, rtol=1e-5, atol=1e-5)


def test_each_batch_item_gets_its_own_noise(sd, conds):
    latent = sample(sd, *conds, torch.zeros((2,) + SHAPE[1:]), seed=4, steps=3, cfg=5.0, sampler_name="euler_ancestral")
    assert not torch.allclose(latent[0], latent[1], atol=1e-3)


def test_a_noise_mask_keeps_the_latent_outside_it(sd, conds):
    picture = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0  # repaint the left half (in pixels; the latent is 8x8 cells)
    result = sample_along(sd, *conds, picture, scheduler_sigmas(SCHEDULE, "normal", 4), sampler="euler", seed=1,
                          cfg=5.0, noise_mask=mask).latent
    torch.testing.assert_close(result[..., 5:], picture[..., 5:], rtol=1e-4, atol=1e-4)
    assert (result[..., :3] - picture[..., :3]).abs().mean() > 0.1


def test_progress_is_reported_per_step_and_interrupt_is_checked_per_model_call(sd, conds):
    steps, calls = [], []
    sample(sd, *conds, torch.zeros(SHAPE), seed=1, steps=4, cfg=5.0, sampler_name="heun", scheduler="normal",
           callback=lambda step, total, latent: steps.append((step, total, latent.shape)),
           check_interrupt=lambda: calls.append(1))
    assert steps == [(i, 4, SHAPE) for i in range(1, 5)]
    assert len(calls) == 4 * 2 - 1  # heun evaluates twice per step but once on the last (Euler) step


def test_an_interrupt_inside_a_two_evaluation_step_stops_sampling(sd, conds):
    class Stop(Exception):
        pass

    calls = []

    def stop_on_second_call():
        calls.append(1)
        if len(calls) == 2:  # heun's second evaluation of its first step
            raise Stop

    with pytest.raises(Stop):
        sample(sd, *conds, torch.zeros(SHAPE), seed=1, steps=4, cfg=5.0, sampler_name="heun", scheduler="normal",
               check_interrupt=stop_on_second_call)
    assert len(calls) == 2


def test_no_sampler_and_no_scheduler_keeps_the_ddpm_sampler(sd, conds):
    from nodegraph.sd import ddpm
    expected = ddpm.sample(sd, *conds, torch.zeros(SHAPE), seed=5, steps=4, cfg=5.0)
    assert torch.equal(sample(sd, *conds, torch.zeros(SHAPE), seed=5, steps=4, cfg=5.0), expected)
    assert not torch.equal(sample(sd, *conds, torch.zeros(SHAPE), seed=5, steps=4, cfg=5.0, sampler_name="ddpm"),
                           expected)


def test_wrong_sigmas_are_refused_clearly(sd, conds):
    for sigmas, problem in ((torch.zeros(0), "empty"), (torch.tensor([1.0, 2.0, 0.0]), "increase"),
                            (torch.tensor([3.0, float("nan")]), "finite"), (torch.ones(2, 2), "1-D")):
        with pytest.raises(ValueError, match=problem):
            sample_along(sd, *conds, torch.zeros(SHAPE), sigmas, sampler="euler", seed=0, cfg=5.0)
