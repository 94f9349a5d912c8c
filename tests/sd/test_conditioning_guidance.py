"""The sampler honours every Cond's area, mask and strength as ComfyUI does (comfy/samplers.py: calc_cond_batch,
get_area_and_mult, resolve_areas_and_cond_masks_multidim, create_cond_with_same_area_if_none, cfg_function).

The reference below is written here from those formulas, on ComfyUI's own data shape (a dict of options per cond),
and evaluates every cond alone; a stand-in model keeps the arithmetic checkable, and one run on the tiny checkpoint
checks it end to end.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from nodegraph.sd import conditioning as cond
from nodegraph.sd import ddpm
from nodegraph.sd.conditioning import Area, AreaFraction, Cond
from nodegraph.sd.sampling import DiscreteSchedule, GuidedDenoiser, ksampler_sigmas, initial_noise, sample_ksampler
from nodegraph.sd.sampling.regions import fit_to_latent, region_of
from parity import comfy_add_twin

SCHEDULE = DiscreteSchedule()
WIDTH = 8  # context channels of the stand-in


class StandIn:
    """A UNet stand-in: eps depends on each item's own context (unchanged when its tokens are repeated), on where a
    cell is (so a crop is not a cut-out of the whole) and on t. Records each call's (x, context) shapes."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context):
        self.calls.append((tuple(x.shape), tuple(context.shape)))
        gains = context.mean(dim=1)[:, : x.shape[1], None, None]
        spatial = x.cumsum(-1) / x.shape[-1] + x.flip(-2).cumsum(-2) / x.shape[-2]
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return torch.tanh(x * gains + 0.3 * spatial + t / 1000)


# --- the reference: ComfyUI's procedure on ComfyUI's dicts, one model call per cond ------------------------------


def comfy_dict(c: Cond) -> dict:
    """The options ComfyUI's nodes would have set for this cond."""
    options = {"context": c.context, "strength": c.strength}
    if isinstance(c.area, AreaFraction):
        options["area"] = ("percentage", c.area.height, c.area.width, c.area.y, c.area.x)
    elif c.area is not None:
        options["area"] = (c.area.height, c.area.width, c.area.y, c.area.x)
    if c.mask is not None:
        options.update(mask=c.mask, mask_strength=c.mask_strength, set_area_to_bounds=c.set_area_to_bounds)
    return options


def resolve(options: dict, height: int, width: int) -> dict:
    options = dict(options)
    if "area" in options and options["area"][0] == "percentage":
        _, h, w, y, x = options["area"]
        options["area"] = (max(1, round(h * height)), max(1, round(w * width)), round(y * height), round(x * width))
    if "mask" in options:
        mask = options["mask"]
        if mask.shape[1:] != (height, width):
            mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear")[:, 0]
        if options["set_area_to_bounds"]:
            bounds = mask.abs().max(dim=0).values
            if not (bounds != 0).any():
                options["area"] = (8, 8, 0, 0)
            else:
                ys, xs = torch.where(bounds != 0)
                y0, x0 = int(ys.min()), int(xs.min())
                options["area"] = (max(8, int(ys.max()) - y0 + 1), max(8, int(xs.max()) - x0 + 1), y0, x0)
        options["mask"] = mask
    return options


def area_and_mult(options: dict, x: torch.Tensor):
    batch, channels, height, width = x.shape
    y0, x0, h, w = 0, 0, height, width
    if "area" in options:
        h, w, y0, x0 = options["area"]
        h, w = min(height - y0, h), min(width - x0, w)
    rows, cols = slice(y0, y0 + h), slice(x0, x0 + w)
    if "mask" in options:
        mask = options["mask"][:batch][:, rows, cols] * options["mask_strength"]
        mult = mask[:, None].repeat(batch // mask.shape[0], channels, 1, 1) * options["strength"]
    else:
        mult = torch.ones(batch, channels, h, w) * options["strength"]
        if "area" in options:
            for axis, offset, size, full in ((2, y0, h, height), (3, x0, w, width)):
                fade = min(8, size // 4)
                profile = torch.ones(size)
                for r in range(size):
                    if offset != 0 and r < fade:
                        profile[r] *= (r + 1) / fade
                    if offset + size < full and size - 1 - r < fade:
                        profile[r] *= (size - r) / fade
                shape = [1, 1, 1, 1]
                shape[axis] = size
                mult = mult * profile.reshape(shape)
    return rows, cols, mult


def reference_denoiser(unet, positive, negative, cfg):
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        conds = {"positive": [resolve(comfy_dict(c), height, width) for c in positive],
                 "negative": [resolve(comfy_dict(c), height, width) for c in negative]}
        for side in conds:
            for c in conds[side]:
                for other in conds:
                    if other != side:
                        comfy_add_twin(conds[other], c, carried="context")
        outputs = []
        for listed in (conds["positive"], None if math.isclose(cfg, 1.0) else conds["negative"]):
            out, counts = torch.zeros_like(x), torch.ones_like(x) * 1e-37
            for options in listed or []:
                rows, cols, mult = area_and_mult(options, x)
                crop = x[:, :, rows, cols]
                context = options["context"]
                context = context.repeat(math.ceil(x.shape[0] / context.shape[0]), 1, 1)[: x.shape[0]]
                s = sigma.reshape(-1, 1, 1, 1)
                eps = unet(crop / (s**2 + 1) ** 0.5, SCHEDULE.timestep(sigma), context).float()
                out[:, :, rows, cols] += (crop - eps * s) * mult
                counts[:, :, rows, cols] += mult
            outputs.append(out / counts)
        return outputs[1] + (outputs[0] - outputs[1]) * cfg

    return denoise


# --- scenarios -----------------------------------------------------------------------------------------------


def text(seed: int, tokens: int = 77) -> torch.Tensor:
    return torch.randn(1, tokens, WIDTH, generator=torch.Generator().manual_seed(seed))


def soft_mask(size: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, size, size, generator=torch.Generator().manual_seed(seed))


def box_mask(size: int, rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[:, rows, cols] = 1.0
    return mask


A, B, N = Cond(text(1)), Cond(text(2)), Cond(text(3))
SCENARIOS = {
    "area inside": ((A, B.replace(area=Area(8, 8, 4, 4), strength=1.5)), (N,), 5.0),
    "area on two edges": ((A, B.replace(area=Area(8, 16, 8, 0))), (N,), 5.0),
    "area past the edge": ((A, B.replace(area=Area(12, 12, 10, 9), strength=0.5)), (N,), 5.0),
    "area alone, cells uncovered": ((B.replace(area=Area(8, 8, 0, 8)),), (N,), 4.0),
    "soft mask": ((A, B.replace(mask=soft_mask(32, 0), mask_strength=0.8)), (N,), 5.0),
    "mask per item": ((A, B.replace(mask=soft_mask(16, 1, batch=2), strength=2.0)), (N,), 5.0),
    "mask bounds": ((A, B.replace(mask=box_mask(16, slice(12, 15), slice(2, 5)), set_area_to_bounds=True)),
                    (N,), 5.0),
    "empty mask bounds": ((A, B.replace(mask=torch.zeros(1, 16, 16), set_area_to_bounds=True)), (N,), 5.0),
    "area and mask": ((A, B.replace(area=Area(8, 8, 0, 0), mask=soft_mask(16, 2))), (N,), 5.0),
    "percentage": ((A, B.replace(area=AreaFraction(0.5, 0.75, 0.25, 0.25))), (N,), 5.0),
    "negative area": ((A,), (N, B.replace(area=Area(8, 8, 8, 8))), 5.0),
    "nested areas": ((A, B.replace(area=Area(8, 8, 4, 4))),
                     (N, Cond(text(4), area=Area(12, 12, 2, 2)), Cond(text(5), area=Area(16, 16, 0, 0))), 5.0),
    "lengths 77 154 231": ((A, Cond(text(2, 154)).replace(area=Area(8, 8, 4, 4))), (Cond(text(3, 231)),), 5.0),
    "cfg 1 with areas": ((A, B.replace(area=Area(8, 8, 4, 4))), (N, Cond(text(4)).replace(area=Area(8, 8, 0, 0))),
                         1.0),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_areas_masks_and_strengths_weigh_the_estimates_as_comfyui_does(name):
    positive, negative, cfg = SCENARIOS[name]
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(9)) * 3
    sigma = torch.full((2,), 3.0)
    expected = reference_denoiser(StandIn(), positive, negative, cfg)(x, sigma)
    actual = GuidedDenoiser(StandIn(), SCHEDULE, positive, negative, cfg)(x, sigma)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def alone(c: Cond, x, sigma) -> torch.Tensor:
    return GuidedDenoiser(StandIn(), SCHEDULE, (c,), None, cfg=1.0)(x, sigma)


X, SIGMA = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4)) * 2, torch.full((1,), 2.0)


def test_two_conds_over_the_whole_latent_give_their_average_weighted_by_strength():
    combined = GuidedDenoiser(StandIn(), SCHEDULE, (A, B.replace(strength=3.0)), None, cfg=1.0)(X, SIGMA)
    torch.testing.assert_close(combined, (alone(A, X, SIGMA) + 3 * alone(B, X, SIGMA)) / 4)


def test_a_masked_cond_acts_only_inside_its_mask():
    mask = torch.zeros(1, 16, 16)
    mask[:, :, :6] = 1.0
    combined = GuidedDenoiser(StandIn(), SCHEDULE, (A, B.replace(mask=mask)), None, cfg=1.0)(X, SIGMA)
    only_a, only_b = alone(A, X, SIGMA), alone(B, X, SIGMA)
    torch.testing.assert_close(combined[..., 6:], only_a[..., 6:])
    torch.testing.assert_close(combined[..., :6], (only_a[..., :6] + only_b[..., :6]) / 2)


def test_conds_of_different_lengths_batch_into_one_call_and_equal_each_alone():
    model = StandIn()
    long = Cond(text(7, 154))
    combined = GuidedDenoiser(model, SCHEDULE, (A, long), None, cfg=1.0)(X, SIGMA)
    assert model.calls == [((2, 4, 16, 16), (2, 154, WIDTH))]
    torch.testing.assert_close(combined, (alone(A, X, SIGMA) + alone(long, X, SIGMA)) / 2)


def test_lengths_too_far_apart_run_in_separate_calls_with_the_same_result():
    model = StandIn()
    very_long = Cond(text(8, 77 * 5))  # ComfyUI pads to a common length only up to 4 times the shorter
    combined = GuidedDenoiser(model, SCHEDULE, (A, very_long), None, cfg=1.0)(X, SIGMA)
    assert sorted(call[1][1] for call in model.calls) == [77, 385]
    torch.testing.assert_close(combined, (alone(A, X, SIGMA) + alone(very_long, X, SIGMA)) / 2)


def test_an_area_prompt_is_answered_by_the_negative_over_the_same_crop_in_one_call():
    model = StandIn()
    GuidedDenoiser(model, SCHEDULE, (A, B.replace(area=Area(8, 8, 4, 4))), (N,), cfg=5.0)(X, SIGMA)
    assert sorted(model.calls) == [((2, 4, 8, 8), (2, 77, WIDTH)), ((2, 4, 16, 16), (2, 77, WIDTH))]


def test_cfg_one_never_evaluates_the_negative_with_areas_either():
    model = StandIn()
    negative = Cond(torch.full((1, 77, WIDTH), 7.0))
    GuidedDenoiser(model, SCHEDULE, (A, B.replace(area=Area(8, 8, 4, 4))), (negative,), cfg=1.0)(X, SIGMA)
    assert sorted(model.calls) == [((1, 4, 8, 8), (1, 77, WIDTH)), ((1, 4, 16, 16), (1, 77, WIDTH))]


def test_one_cond_per_side_is_the_plain_path_with_one_call_and_the_same_numbers():
    model = StandIn()
    from_conds = GuidedDenoiser(model, SCHEDULE, (A,), (N,), cfg=5.0)(X, SIGMA)
    from_tensors = GuidedDenoiser(StandIn(), SCHEDULE, A.context, N.context, cfg=5.0)(X, SIGMA)
    assert torch.equal(from_conds, from_tensors) and len(model.calls) == 1


def test_an_area_outside_the_latent_is_a_clear_error():
    with pytest.raises(ValueError, match=r"lies outside the latent of 16 x 16 cells"):
        GuidedDenoiser(StandIn(), SCHEDULE, (B.replace(area=Area(8, 8, 16, 0)),), None, cfg=1.0)(X, SIGMA)


def test_area_edges_inside_the_latent_fade_in_over_a_quarter_of_the_side_at_most():
    region = region_of(Cond(text(1), area=Area(16, 16, 8, 0)), (1, 4, 32, 32), torch.device("cpu"))
    assert (region.rows, region.cols) == (slice(8, 24), slice(0, 16))
    rows, cols = region.weight[0, 0, :, 8], region.weight[0, 0, 8, :]
    assert rows.tolist() == [0.25, 0.5, 0.75] + [1.0] * 10 + [0.75, 0.5, 0.25]  # top and bottom are inside
    assert cols.tolist() == [1.0] * 13 + [0.75, 0.5, 0.25]  # the left edge is the latent's: no fade there


def test_mask_bounds_become_the_area_widened_to_8_cells():
    mask = box_mask(16, slice(2, 5), slice(3, 13))
    fitted = fit_to_latent(Cond(text(1), mask=mask, set_area_to_bounds=True), 16, 16)
    assert fitted.area == Area(8, 10, 2, 3)
    assert fit_to_latent(Cond(text(1), mask=torch.zeros(1, 4, 4), set_area_to_bounds=True), 16, 16).area == \
        Area(8, 8, 0, 0)
    resized = fit_to_latent(Cond(text(1), mask=torch.ones(1, 64, 64)), 16, 16).mask
    assert resized.shape == (1, 16, 16)


# --- the DDPM sampler ------------------------------------------------------------------------------------------


def test_ddpm_takes_conditioning_over_the_whole_latent(sd, conds):
    positive, negative = conds
    from_tensors = ddpm.sample(sd, positive, negative, torch.zeros(1, 4, 8, 8), seed=2, steps=3, cfg=5.0)
    from_conds = ddpm.sample(sd, (Cond(positive),), (Cond(negative),), torch.zeros(1, 4, 8, 8), seed=2, steps=3,
                             cfg=5.0)
    assert torch.equal(from_tensors, from_conds)
    combined = ddpm.sample(sd, cond.combine((Cond(positive),), (Cond(negative),)), (Cond(negative),),
                           torch.zeros(1, 4, 8, 8), seed=2, steps=3, cfg=5.0)
    assert torch.isfinite(combined).all() and not torch.allclose(combined, from_conds)


def test_ddpm_averages_combined_conds_noise_predictions_by_strength():
    unet, x = StandIn(), torch.randn(1, 4, 8, 8)
    guided = ddpm.guidance(unet, (A, B.replace(strength=3.0)), (N,), 1.0, x.shape, x.device)
    expected = (unet(x, 500, A.context) + 3 * unet(x, 500, B.context)) / 4
    torch.testing.assert_close(guided(x, 500), expected)


def test_ddpm_refuses_areas_and_masks_and_points_to_ksampler(sd, conds):
    placed = cond.set_area_in_pixels((Cond(conds[0]),), 64, 64, 0, 0, 1.0)
    with pytest.raises(ValueError, match="positive conditioning over the whole latent.*KSampler"):
        ddpm.sample(sd, placed, conds[1], torch.zeros(1, 4, 8, 8), seed=2, steps=3, cfg=5.0)


# --- end to end on the tiny checkpoint ---------------------------------------------------------------------------


def test_ksampler_with_an_area_prompt_follows_the_reference_end_to_end(sd):
    positive = cond.combine(cond.encode_text(sd, "a red circle"),
                            cond.set_area_in_pixels(cond.encode_text(sd, "a blue square"), 64, 64, 32, 16, 1.5))
    negative = cond.encode_text(sd, "blurry")
    shape, seed, cfg = (1, 4, 16, 16), 11, 6.0
    actual = sample_ksampler(sd, positive, negative, torch.zeros(shape), seed=seed, steps=4, cfg=cfg,
                             sampler_name="euler", scheduler="normal").latent

    sigmas = ksampler_sigmas(sd.schedule, "normal", 4)
    denoise = reference_denoiser(sd.unet, positive, negative, cfg)
    x = initial_noise(shape, seed) * math.sqrt(1 + float(sigmas[0]) ** 2)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        with torch.no_grad():
            denoised = denoise(x, sigma.reshape(1))
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    expected = x / sd.latent_scale
    without_area = sample_ksampler(sd, cond.encode_text(sd, "a red circle"), negative, torch.zeros(shape), seed=seed,
                                   steps=4, cfg=cfg, sampler_name="euler", scheduler="normal").latent
    assert (actual - without_area).abs().max() > 1e-3  # the area prompt changed the picture
    assert float((actual - expected).norm() / expected.norm()) <= 1e-5
