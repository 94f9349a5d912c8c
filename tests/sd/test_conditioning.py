"""CONDITIONING as a tuple of Cond, and the operations behind ComfyUI's conditioning nodes (nodes.py), each as
ComfyUI defines it: combine, concat, average, zero out, set area (pixels and percentages), set mask."""

import logging

import pytest
import torch

from nodegraph.sd import conditioning as cond
from nodegraph.sd.conditioning import Area, AreaFraction, Cond


def context(tokens: int = 77, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, tokens, 8, generator=torch.Generator().manual_seed(seed))


def test_a_context_tensor_is_one_cond_over_the_whole_latent():
    tensor = context()
    (only,) = cond.as_conditioning(tensor)
    assert only.context is tensor and only.is_everywhere and only.strength == 1.0 and only.pooled is None


def test_what_is_not_conditioning_is_refused_by_name():
    with pytest.raises(TypeError, match="positive must be a CONDITIONING"):
        cond.as_conditioning("a prompt", "positive")
    with pytest.raises(ValueError, match=r"negative.*\[batch, tokens, channels\]"):
        cond.as_conditioning(torch.zeros(77, 8), "negative")
    with pytest.raises(ValueError, match="empty"):
        cond.as_conditioning((), "positive")


def test_encode_text_wraps_the_models_encoding_in_one_cond(sd):
    (encoded,) = cond.encode_text(sd, "four")
    torch.testing.assert_close(encoded.context, sd.encode_prompt(["four"]), rtol=0, atol=1e-6)
    assert encoded.is_everywhere and encoded.pooled.shape == (1, encoded.context.shape[2])


def test_combine_keeps_both_lists_in_order():
    a, b, c = (Cond(context(seed=i)) for i in range(3))
    assert cond.combine((a,), (b, c)) == (a, b, c)


def test_concat_appends_the_first_cond_of_from_along_the_tokens_and_keeps_the_targets_options(caplog):
    target = Cond(context(77, 1), area=Area(8, 8, 0, 0), strength=0.5)
    source, ignored = Cond(context(154, 2)), Cond(context(77, 3))
    with caplog.at_level(logging.WARNING):
        (joined,) = cond.concat((target,), (source, ignored))
    assert joined.context.shape == (1, 231, 8)
    assert torch.equal(joined.context[:, :77], target.context) and torch.equal(joined.context[:, 77:], source.context)
    assert (joined.area, joined.strength) == (Area(8, 8, 0, 0), 0.5)
    assert "only the first" in caplog.text
    caplog.clear()
    cond.concat((target,), (source,))
    assert caplog.text == ""


def test_concat_of_different_text_encoders_is_refused():
    with pytest.raises(ValueError, match="ConditioningConcat.*channels"):
        cond.concat((Cond(torch.zeros(1, 77, 8)),), (Cond(torch.zeros(1, 77, 16)),))


def test_average_weights_to_by_strength_and_from_by_the_rest():
    to, source = Cond(context(77, 1), strength=2.0), Cond(context(77, 2))
    (blended,) = cond.average((to,), (source,), 0.25)
    torch.testing.assert_close(blended.context, to.context * 0.25 + source.context * 0.75)
    assert blended.strength == 2.0
    (kept,) = cond.average((to,), (source,), 1.0)
    torch.testing.assert_close(kept.context, to.context)


def test_average_cuts_a_longer_from_and_pads_a_shorter_one_with_zeros():
    long_to, short_to = Cond(context(154, 1)), Cond(context(77, 2))
    source_short, source_long = Cond(context(77, 3)), Cond(context(154, 4))
    (padded,) = cond.average((long_to,), (source_short,), 0.5)
    torch.testing.assert_close(padded.context[:, :77], long_to.context[:, :77] * 0.5 + source_short.context * 0.5)
    torch.testing.assert_close(padded.context[:, 77:], long_to.context[:, 77:] * 0.5)
    (cut,) = cond.average((short_to,), (source_long,), 0.5)
    torch.testing.assert_close(cut.context, short_to.context * 0.5 + source_long.context[:, :77] * 0.5)


def test_average_blends_pooled_outputs_and_gives_the_sources_to_a_target_without_one(caplog):
    pooled_to, pooled_from = torch.ones(1, 8), torch.full((1, 8), 3.0)
    with_pooled = Cond(context(seed=1), pooled=pooled_to)
    without = Cond(context(seed=2))
    source = Cond(context(seed=3), pooled=pooled_from)
    with caplog.at_level(logging.WARNING):
        blended, inherited = cond.average((with_pooled, without), (source, source), 0.5)
    torch.testing.assert_close(blended.pooled, torch.full((1, 8), 2.0))
    assert inherited.pooled is pooled_from
    assert "ConditioningAverage" in caplog.text and "only the first" in caplog.text
    (no_source_pooled,) = cond.average((with_pooled,), (without,), 0.5)
    assert no_source_pooled.pooled is pooled_to


def test_zero_out_zeroes_context_and_pooled_and_keeps_the_options():
    original = Cond(context(), pooled=torch.ones(1, 8), area=Area(16, 16, 8, 0), strength=1.5)
    (zeroed,) = cond.zero_out((original, ))
    assert torch.count_nonzero(zeroed.context) == 0 and zeroed.context.shape == original.context.shape
    assert torch.count_nonzero(zeroed.pooled) == 0
    assert (zeroed.area, zeroed.strength) == (original.area, 1.5)
    (no_pooled,) = cond.zero_out((Cond(context()),))
    assert no_pooled.pooled is None


def test_set_area_in_pixels_floors_each_value_to_latent_cells():
    (placed,) = cond.set_area_in_pixels((Cond(context()),), width=100, height=64, x=15, y=8, strength=0.7)
    assert placed.area == Area(height=8, width=12, y=1, x=1) and placed.strength == 0.7


def test_set_area_drops_mask_bounds_but_keeps_the_mask():
    mask = torch.ones(1, 4, 4)
    (masked,) = cond.set_mask((Cond(context()),), mask, 0.5, mask_bounds=True)
    (placed,) = cond.set_area((masked,), Area(8, 8, 0, 0), 1.0)
    assert placed.set_area_to_bounds is False and placed.mask is masked.mask and placed.mask_strength == 0.5


def test_set_mask_stores_a_batched_mask_its_strength_and_the_bounds_choice():
    (masked,) = cond.set_mask((Cond(context(), strength=2.0),), torch.ones(4, 4), 0.25, mask_bounds=False)
    assert masked.mask.shape == (1, 4, 4) and masked.mask_strength == 0.25 and masked.set_area_to_bounds is False
    assert masked.strength == 2.0  # the area strength is another knob
    (bounded,) = cond.set_mask((Cond(context()),), torch.ones(2, 4, 4), 1.0, mask_bounds=True)
    assert bounded.mask.shape == (2, 4, 4) and bounded.set_area_to_bounds is True


def test_set_mask_refuses_what_is_not_a_mask():
    with pytest.raises(ValueError, match=r"mask must be a \[batch, height, width\]"):
        cond.set_mask((Cond(context()),), torch.ones(1, 1, 4, 4), 1.0, mask_bounds=False)


@pytest.mark.parametrize("fraction, cells", [
    (AreaFraction(0.5, 0.25, 0.5, 0.0), Area(8, 6, 8, 0)),     # 0.25 * 24 = 6
    (AreaFraction(0.0, 0.0, 0.0, 0.0), Area(1, 1, 0, 0)),      # at least one cell
    (AreaFraction(0.5, 0.5, 0.15625, 0.3125), Area(8, 12, 2, 8)),  # 2.5 and 7.5 round half to even
])
def test_an_area_in_fractions_becomes_cells_as_comfyui_rounds(fraction, cells):
    assert fraction.cells(16, 24) == cells
