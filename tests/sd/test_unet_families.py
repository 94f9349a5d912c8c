"""One UNet for every family, against diffusers on small random weights in the single-file layout (fp32).

Each test writes our module's random tensors under `model.diffusion_model.` as a checkpoint holds them, converts
them with diffusers' own single-file functions into its UNet2DConditionModel, builds ours from the shapes alone (as
the loader does), and compares the predictions. The SDXL-like ones pass diffusers its `text_embeds` and `time_ids`
and us the ADM vector from nodegraph.sd.adm, which so is tested against diffusers' size embeddings too."""


import pytest
import torch

from checkpoints import randomize
from nodegraph.sd.adm import refiner_adm, sdxl_adm
from nodegraph.sd.unet import UNet, UNetConfig
from family_reference import diffusers_unet
from parity import relative_error

POOLED = 64  # a small stand-in for bigG's 1280-wide pooled embedding
FAMILIES = {  # tiny configs with each family's features
    "sd2": UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1),
                      context_dim=96, linear_projection=True, head_size=64),
    "sdxl_base": UNetConfig(model_channels=64, channel_mult=(1, 2, 4), num_res_blocks=2, attention_levels=(1, 2),
                            transformer_depth=1, context_dim=80, linear_projection=True, head_size=64,
                            adm_in_channels=POOLED + 6 * 256, transformer_depth_input=(0, 0, 1, 1, 2, 2),
                            transformer_depth_middle=2, transformer_depth_output=(2, 2, 2, 1, 1, 1, 0, 0, 0)),
    "sdxl_refiner": UNetConfig(model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_levels=(1, 2),
                               transformer_depth=2, context_dim=72, linear_projection=True, head_size=64,
                               adm_in_channels=POOLED + 5 * 256),
    "sd1_inpainting": UNetConfig(in_channels=9, model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                                 attention_levels=(0, 1), context_dim=48),
}
SIZES = {"height": 1024, "width": 832, "crop_h": 48, "crop_w": 16}  # all different, so their order shows
TARGET = {"target_height": 896, "target_width": 1152}
AESTHETIC = 6.0


@pytest.fixture(scope="module", params=list(FAMILIES))
def models(request):
    """(family, ours built from the checkpoint's shapes, diffusers' from the same checkpoint)."""
    config = FAMILIES[request.param]
    source = UNet(config)
    randomize(source, torch.Generator().manual_seed(14))
    checkpoint = {"model.diffusion_model." + k: v for k, v in source.state_dict().items()}
    weights = {k.removeprefix("model.diffusion_model."): v for k, v in checkpoint.items()}
    inferred = UNetConfig.from_state_dict(weights, head_size=config.head_size)
    assert inferred == config
    ours = UNet(inferred)
    ours.load_state_dict(weights, strict=True)
    return request.param, ours.eval(), diffusers_unet(checkpoint, config)


def test_unet_matches_diffusers(models):
    family, ours, theirs = models
    config = ours.config
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, config.in_channels, 16, 12, generator=generator)  # non-square: 12 is no multiple of 8
    t = torch.tensor([811.0, 37.0])
    context = torch.randn(2, 10, config.context_dim, generator=generator)
    pooled = torch.randn(2, POOLED, generator=generator)
    y, added = None, None
    if family == "sdxl_base":
        y = sdxl_adm(pooled, **SIZES, **TARGET)
        added = {"text_embeds": pooled, "time_ids": torch.tensor([[*SIZES.values(), *TARGET.values()]] * 2, dtype=torch.float32)}
    elif family == "sdxl_refiner":
        y = refiner_adm(pooled, **SIZES, aesthetic_score=AESTHETIC)
        added = {"text_embeds": pooled, "time_ids": torch.tensor([[*SIZES.values(), AESTHETIC]] * 2, dtype=torch.float32)}
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        actual = ours(x, t, context, y=y)
    error = relative_error(actual, expected)
    print(f"{family}: relative error {error:.2e}")
    assert actual.shape == (2, 4, 16, 12)
    assert error <= 1e-4


@pytest.mark.parametrize("family", ["sdxl_base", "sdxl_refiner"])
def test_size_conditioning_changes_the_prediction(family):
    """The ADM vector reaches the prediction: other sizes give another answer (so the parity above is no accident)."""
    ours = UNet(FAMILIES[family])
    randomize(ours, torch.Generator().manual_seed(14))
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 4, ours.config.context_dim, generator=generator)
    pooled = torch.randn(1, POOLED, generator=generator)
    adm = (lambda **s: sdxl_adm(pooled, **s, **TARGET)) if family == "sdxl_base" else (lambda **s: refiner_adm(pooled, **s, aesthetic_score=AESTHETIC))
    swapped = {**SIZES, "height": SIZES["width"], "width": SIZES["height"]}
    with torch.no_grad():
        assert relative_error(ours(x, 500, context, y=adm(**SIZES)), ours(x, 500, context, y=adm(**swapped))) > 1e-3


def test_y_is_required_exactly_when_the_unet_has_label_emb():
    sdxl, sd2 = UNet(FAMILIES["sdxl_base"]), UNet(FAMILIES["sd2"])
    x = torch.zeros(1, 4, 8, 8)
    with torch.no_grad():
        with pytest.raises(ValueError, match="needs y"):
            sdxl(x, 1, torch.zeros(1, 3, 80))
        with pytest.raises(ValueError, match=r"y must be \[1, 1600\]"):
            sdxl(x, 1, torch.zeros(1, 3, 80), y=torch.zeros(1, 1599))
        with pytest.raises(ValueError, match="takes no y"):
            sd2(x, 1, torch.zeros(1, 3, 96), y=torch.zeros(1, 16))
        assert sdxl(x, 1, torch.zeros(1, 3, 80), y=torch.zeros(1, 1600)).shape == x.shape


def test_per_block_depths_come_back_from_the_shapes():
    """Distilled SDXL models vary depths within a level and may drop the middle transformer; no family of diffusers'
    has such a layout, so the shapes' round trip is the check."""
    config = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=2, attention_levels=(1,), transformer_depth=2,
                        context_dim=16, linear_projection=True, head_size=32, adm_in_channels=24,
                        transformer_depth_input=(0, 0, 2, 1), transformer_depth_middle=0,
                        transformer_depth_output=(3, 1, 0, 0, 1, 0))
    state = UNet(config).state_dict()
    assert "middle_block.1.in_layers.0.weight" in state and "middle_block.2.in_layers.0.weight" not in state
    assert "output_blocks.0.1.transformer_blocks.2.norm1.weight" in state and "output_blocks.4.1.proj_in.weight" in state
    assert UNetConfig.from_state_dict(state, head_size=32) == config
    with pytest.raises(ValueError, match="transformer_depth_output has 5 depths"):
        UNetConfig(channel_mult=(1, 2), transformer_depth_output=(1, 1, 1, 1, 1))


def test_sd1_configs_stay_uniform():
    """SD 1.x shapes give the plain config: no per-block depths, no label_emb, 8 heads."""
    config = UNetConfig(model_channels=32, channel_mult=(1, 2, 2), attention_levels=(1,), context_dim=64)
    inferred = UNetConfig.from_state_dict(UNet(config).state_dict())
    assert inferred == config and inferred.transformer_depth_input is None and inferred.head_size is None


def test_adm_vectors_at_the_real_widths_match_diffusers_time_embeddings():
    from diffusers.models.embeddings import get_timestep_embedding

    pooled = torch.randn(3, 1280, generator=torch.Generator().manual_seed(3))

    def reference(numbers):
        sizes = get_timestep_embedding(torch.tensor(numbers, dtype=torch.float32), 256, flip_sin_to_cos=True, downscale_freq_shift=0)
        return torch.cat([pooled, sizes.flatten().expand(3, -1)], dim=1)

    base = sdxl_adm(pooled, 1024, 1024, 0, 0, 1024, 1024)
    refiner = refiner_adm(pooled, 768, 1344, 32, 0, 2.5)
    assert base.shape == (3, 2816) and base.dtype == torch.float32
    assert refiner.shape == (3, 2560)
    torch.testing.assert_close(base, reference([1024, 1024, 0, 0, 1024, 1024]), rtol=0, atol=1e-6)
    torch.testing.assert_close(refiner, reference([768, 1344, 32, 0, 2.5]), rtol=0, atol=1e-6)
    torch.testing.assert_close(base[:, :1280], pooled, rtol=0, atol=0)
