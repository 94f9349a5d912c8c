"""The MASK socket and ComfyUI's mask nodes as ComfyUI defines them: conversions to and from IMAGE, solid, inverted,
cropped, combined, feathered, grown and thresholded masks, masked compositing, previews; and masks travelling
between nodes in a run."""

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from engine_fixtures import env, node, workflow  # noqa: F401
from nodegraph.executor import Executor, NodeFailed
from nodegraph.nodes import RunContext, builtin_registry
from nodegraph.nodes.mask import (CropMask, FeatherMask, GrowMask, ImageColorToMask, ImageCompositeMasked,
                                  ImageToMask, InvertMask, MaskComposite, MaskPreview, MaskToImage, SolidMask,
                                  ThresholdMask)
from nodegraph.workflow import InvalidWorkflow


def test_mask_to_image_repeats_the_mask_in_every_colour_channel():
    mask = torch.rand(2, 5, 7)
    image = MaskToImage().run(None, mask=mask)["IMAGE"]
    assert image.shape == (2, 3, 5, 7) and all(torch.equal(image[:, c], mask) for c in range(3))
    assert MaskToImage().run(None, mask=torch.rand(5, 7))["IMAGE"].shape == (1, 3, 5, 7)  # [H, W] is one mask


def test_image_to_mask_takes_one_channel_and_explains_that_images_carry_no_alpha():
    image = torch.rand(2, 3, 4, 6)
    assert torch.equal(ImageToMask().run(None, image=image, channel="green")["MASK"], image[:, 1])
    with pytest.raises(ValueError, match="LoadImage's MASK"):
        ImageToMask().run(None, image=image, channel="alpha")
    assert ImageToMask.input_specs()["channel"].choices == ("red", "green", "blue", "alpha")


def test_image_color_to_mask_marks_exactly_that_8_bit_colour():
    image = torch.zeros(1, 3, 2, 3)
    image[0, :, 0, 1] = torch.tensor([0x12, 0x34, 0x56]) / 255.0
    image[0, :, 1, 2] = torch.tensor([0x12, 0x34, 0x57]) / 255.0
    mask = ImageColorToMask().run(None, image=image, color=0x123456)["MASK"]
    assert mask.tolist() == [[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]


def test_solid_and_inverted_masks():
    solid = SolidMask().run(None, value=0.25, width=7, height=3)["MASK"]
    assert solid.shape == (1, 3, 7) and (solid == 0.25).all() and solid.dtype == torch.float32
    assert (InvertMask().run(None, mask=solid)["MASK"] == 0.75).all()


def test_crop_mask_cuts_a_region_that_ends_at_the_edges():
    mask = torch.arange(4 * 6, dtype=torch.float32).view(1, 4, 6) / 24
    crop = CropMask().run
    assert torch.equal(crop(None, mask=mask, x=2, y=1, width=3, height=2)["MASK"], mask[:, 1:3, 2:5])
    assert crop(None, mask=mask, x=4, y=2, width=512, height=512)["MASK"].shape == (1, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        crop(None, mask=mask, x=6, y=0, width=1, height=1)


@pytest.mark.parametrize("operation, expected", [
    ("multiply", [0.2, 0.0, 0.45]), ("add", [0.9, 0.6, 1.0]), ("subtract", [0.0, 0.0, 0.4]),
    # the logical ones round first, half to even as torch rounds: 0.4 -> 0, 0.5 -> 0, 0.6 -> 1, 0.9 -> 1
    ("and", [0.0, 0.0, 0.0]), ("or", [0.0, 1.0, 1.0]), ("xor", [0.0, 1.0, 1.0])])
def test_mask_composite_operations_clamp_and_round_as_comfyui(operation, expected):
    destination = torch.tensor([[[0.4, 0.0, 0.9]]])
    source = torch.tensor([[[0.5, 0.6, 0.5]]])
    out = MaskComposite().run(None, destination=destination, source=source, x=0, y=0, operation=operation)["MASK"]
    assert out[0, 0].tolist() == pytest.approx(expected)


def test_mask_composite_places_the_source_at_x_y_and_drops_what_falls_outside():
    destination = torch.zeros(1, 4, 5)
    out = MaskComposite().run(None, destination=destination, source=torch.ones(1, 3, 3), x=3, y=2,
                              operation="add")["MASK"]
    expected = torch.zeros(1, 4, 5)
    expected[:, 2:, 3:] = 1.0
    assert torch.equal(out, expected)
    untouched = MaskComposite().run(None, destination=destination, source=torch.ones(1, 3, 3), x=9, y=0,
                                    operation="add")["MASK"]
    assert torch.equal(untouched, destination)


def feather_reference(mask: np.ndarray, left, top, right, bottom) -> np.ndarray:
    """FeatherMask written out column by column and row by row, independently of the node's vectorised code."""
    out = mask.astype(np.float64).copy()
    height, width = out.shape[-2:]
    left, right, top, bottom = min(left, width), min(right, width), min(top, height), min(bottom, height)
    for x in range(left):
        out[..., x] *= (x + 1) / left
    for x in range(right):
        out[..., width - 1 - x] *= (x + 1) / right
    for y in range(top):
        out[..., y, :] *= (y + 1) / top
    for y in range(bottom):
        out[..., height - 1 - y, :] *= (y + 1) / bottom
    return out


@pytest.mark.parametrize("sides", [(3, 0, 0, 0), (0, 2, 4, 1), (5, 5, 5, 5), (20, 0, 0, 9)])
def test_feather_mask_ramps_from_each_chosen_edge(sides):
    mask = torch.rand(2, 6, 8)
    out = FeatherMask().run(None, mask=mask, left=sides[0], top=sides[1], right=sides[2], bottom=sides[3])["MASK"]
    assert np.allclose(out.numpy(), feather_reference(mask.numpy(), *sides), rtol=1e-6, atol=1e-7)


def test_feather_mask_gives_the_outermost_column_one_nth():
    out = FeatherMask().run(None, mask=torch.ones(1, 1, 6), left=0, top=0, right=3, bottom=0)["MASK"]
    assert out[0, 0].tolist() == pytest.approx([1, 1, 1, 1, 2 / 3, 1 / 3])


@pytest.mark.parametrize("expand", [1, 3, -1, -2])
@pytest.mark.parametrize("tapered_corners", [True, False])
def test_grow_mask_is_greyscale_dilation_or_erosion_as_scipy_computes_it(expand, tapered_corners):
    rng = np.random.default_rng(abs(expand) + 10 * tapered_corners)
    masks = (rng.random((2, 9, 11)) > 0.8).astype(np.float32) * rng.random((2, 9, 11)).astype(np.float32)
    if expand < 0:
        masks = 1.0 - masks
    corner = 0 if tapered_corners else 1
    footprint = np.array([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]])
    expected = []
    for mask in masks:
        for _ in range(abs(expand)):
            morph = scipy.ndimage.grey_dilation if expand > 0 else scipy.ndimage.grey_erosion
            mask = morph(mask, footprint=footprint)
        expected.append(mask)
    out = GrowMask().run(None, mask=torch.from_numpy(masks), expand=expand, tapered_corners=tapered_corners)["MASK"]
    assert np.array_equal(out.numpy(), np.stack(expected))


def test_grow_mask_with_zero_expand_changes_nothing_and_grows_a_pixel_into_a_plus_or_square():
    dot = torch.zeros(1, 5, 5)
    dot[0, 2, 2] = 1.0
    assert torch.equal(GrowMask().run(None, mask=dot, expand=0, tapered_corners=True)["MASK"], dot)
    plus = GrowMask().run(None, mask=dot, expand=1, tapered_corners=True)["MASK"]
    square = GrowMask().run(None, mask=dot, expand=1, tapered_corners=False)["MASK"]
    assert plus.sum() == 5 and square.sum() == 9 and square[0, 1:4, 1:4].all()


def test_threshold_mask_is_one_strictly_above_the_value():
    mask = torch.tensor([[[0.2, 0.5, 0.51]]])
    assert ThresholdMask().run(None, mask=mask, value=0.5)["MASK"].tolist() == [[[0.0, 0.0, 1.0]]]


def test_image_composite_masked_pastes_at_x_y_blended_by_the_mask():
    destination, source = torch.zeros(1, 3, 4, 6), torch.ones(1, 3, 2, 3)
    composite = ImageCompositeMasked().run
    out = composite(None, destination=destination, source=source, x=4, y=1, resize_source=False)["IMAGE"]
    expected = torch.zeros(1, 3, 4, 6)
    expected[..., 1:3, 4:6] = 1.0  # the source's third column falls off the right edge
    assert torch.equal(out, expected) and not destination.any()  # the destination is not changed in place
    half = composite(None, destination=destination, source=source, x=0, y=0, resize_source=False,
                     mask=torch.tensor([[[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]]))["IMAGE"]
    assert half[0, 0, 0, :4].tolist() == [1.0, 0.5, 0.0, 0.0] and half[0, 0, 1].sum() == 0


def test_image_composite_masked_resizes_the_source_and_repeats_it_over_the_batch():
    destination = torch.zeros(3, 3, 4, 4)
    out = ImageCompositeMasked().run(None, destination=destination, source=torch.ones(1, 3, 2, 2), x=0, y=0,
                                     resize_source=True)["IMAGE"]
    assert (out == 1.0).all() and out.shape == (3, 3, 4, 4)
    assert ImageCompositeMasked.input_specs()["mask"].optional


def test_mask_preview_writes_the_mask_as_a_grey_temp_picture(env):
    mask = torch.tensor([[[0.0, 0.5, 0.999, 1.0]]])
    out = MaskPreview().run(RunContext(env, "preview", {}), mask=mask)
    ref = out["ui"]["images"][0]
    assert ref["type"] == "temp" and ref["filename"].startswith("ComfyUI_temp_")
    pixels = np.asarray(Image.open(env.temp_dir / ref["filename"]))
    assert pixels.shape == (1, 4, 3) and pixels[0, :, 0].tolist() == [0, 127, 254, 255]  # truncated, as ComfyUI


def test_masks_travel_between_nodes_in_a_run(env):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[1, 1, 3] = 0  # one transparent pixel: LoadImage's MASK is 1 there
    Image.fromarray(pixels, "RGBA").save(env.input_dir / "hole.png")
    flow = workflow(
        load=node("ComfyUI.LoadImage", image="hole.png"),
        grow=node("GrowMask", mask=["load", "MASK"], expand=1, tapered_corners=False),
        picture=node("MaskToImage", mask=["grow", "MASK"]),
        save=node("ComfyUI.SaveImage", images=["picture", "IMAGE"], filename_prefix="mask"))
    result = Executor(env).run(flow)
    saved = np.asarray(Image.open(env.output_dir / result.outputs["save"]["images"][0]["filename"]))
    assert (saved[0:3, 0:3] == 255).all() and saved.sum() == 9 * 3 * 255


def test_a_mask_input_refuses_an_image_link(env):
    Image.new("RGB", (4, 4)).save(env.input_dir / "x.png")
    flow = workflow(load=node("ComfyUI.LoadImage", image="x.png"),
                    grow=node("GrowMask", mask=["load", "IMAGE"], expand=1, tapered_corners=True),
                    preview=node("MaskPreview", mask=["grow", "MASK"]))
    with pytest.raises(InvalidWorkflow) as failure:
        Executor(env).run(flow)
    assert [(i.node_id, i.input, i.code) for i in failure.value.issues] == [("grow", "mask", "socket_mismatch")]


def test_a_node_failing_on_a_bad_mask_names_itself(env):
    Image.new("RGB", (4, 4)).save(env.input_dir / "x.png")
    flow = workflow(load=node("ComfyUI.LoadImage", image="x.png"),
                    crop=node("CropMask", mask=["load", "MASK"], x=100, y=0, width=4, height=4),
                    preview=node("MaskPreview", mask=["crop", "MASK"]))
    with pytest.raises(NodeFailed) as failure:
        Executor(env).run(flow)
    assert failure.value.node_id == "crop" and "outside" in failure.value.message


def test_mask_nodes_are_declared_as_comfyui_declares_them():
    registry = builtin_registry()
    expected = {
        "MaskToImage": (["mask"], ["IMAGE"]), "ImageToMask": (["image", "channel"], ["MASK"]),
        "ImageColorToMask": (["image", "color"], ["MASK"]), "SolidMask": (["value", "width", "height"], ["MASK"]),
        "InvertMask": (["mask"], ["MASK"]), "CropMask": (["mask", "x", "y", "width", "height"], ["MASK"]),
        "MaskComposite": (["destination", "source", "x", "y", "operation"], ["MASK"]),
        "FeatherMask": (["mask", "left", "top", "right", "bottom"], ["MASK"]),
        "GrowMask": (["mask", "expand", "tapered_corners"], ["MASK"]), "ThresholdMask": (["mask", "value"], ["MASK"]),
        "ImageCompositeMasked": (["destination", "source", "x", "y", "resize_source", "mask"], ["IMAGE"]),
        "MaskPreview": (["mask"], []),
    }
    for class_type, (inputs, outputs) in expected.items():
        cls = registry.get_comfy(class_type)
        assert (list(cls.input_specs()), list(cls.OUTPUTS.values())) == (inputs, outputs), class_type
    assert MaskComposite.input_specs()["operation"].choices == ("multiply", "add", "subtract", "and", "or", "xor")
    assert GrowMask.input_specs()["expand"].minimum == -16384
