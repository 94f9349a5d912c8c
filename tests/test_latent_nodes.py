"""ComfyUI's latent nodes as ComfyUI defines them: sizes and rounding, resizing and cropping, batch handling (noise
masks and batch indices), compositing, noise masks, and .latent files."""

import json
import math
import os

import numpy as np
import pytest
import safetensors
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from engine_fixtures import all_files, env, node, workflow  # noqa: F401
from nodegraph.executor import Executor
from nodegraph.nodes import Latent, RunContext, builtin_registry
from nodegraph.nodes.latent import (EmptyLatent, EmptyLatentImage, LatentComposite, LatentFromBatch, LatentUpscale,
                                    LatentUpscaleBy, RepeatLatentBatch, SetLatentNoiseMask)
from nodegraph.nodes.latent_files import LoadLatent, SaveLatent, latent_file_bytes
from nodegraph.nodes.latent_resize import bislerp
from nodegraph.workflow import InvalidWorkflow


def latent(batch=1, height=8, width=8, seed=0, **fields) -> Latent:
    return Latent(torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed)), **fields)


def specs(type_name):
    return builtin_registry().get(type_name).input_specs()


# --- declarations ------------------------------------------------------------------------------------------------


def test_latent_nodes_declare_comfyuis_inputs_outputs_and_names():
    expected = {  # class_type: (inputs in order, outputs, display name)
        "EmptyLatentImage": (["width", "height", "batch_size"], ["LATENT"], "Empty Latent Image"),
        "LatentUpscale": (["samples", "upscale_method", "width", "height", "crop"], ["LATENT"], "Upscale Latent"),
        "LatentUpscaleBy": (["samples", "upscale_method", "scale_by"], ["LATENT"], "Upscale Latent By"),
        "LatentFromBatch": (["samples", "batch_index", "length"], ["LATENT"], "Get Latent From Batch"),
        "RepeatLatentBatch": (["samples", "amount"], ["LATENT"], "Repeat Latent Batch"),
        "LatentComposite": (["samples_to", "samples_from", "x", "y", "feather"], ["LATENT"], "Latent Composite"),
        "SetLatentNoiseMask": (["samples", "mask"], ["LATENT"], "Set Latent Noise Mask"),
        "SaveLatent": (["samples", "filename_prefix"], [], "Save Latent"),
        "LoadLatent": (["latent"], ["LATENT"], "Load Latent"),
    }
    registry = builtin_registry()
    for class_type, (inputs, outputs, display) in expected.items():
        found = registry.get_comfy(class_type)
        assert found is not None and found.TYPE == class_type, class_type
        assert (list(found.input_specs()), list(found.OUTPUTS), found.DISPLAY_NAME) == (inputs, outputs, display)
    assert registry.get_comfy("SaveLatent").OUTPUT_NODE


def test_latent_node_defaults_bounds_and_choices_follow_comfyui():
    empty = specs("EmptyLatentImage")
    assert [(empty[n].default, empty[n].minimum, empty[n].maximum) for n in ("width", "height", "batch_size")] == [
        (512, 16, 16384), (512, 16, 16384), (1, 1, 4096)]
    upscale = specs("LatentUpscale")
    assert upscale["upscale_method"].choices == ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
    assert upscale["crop"].choices == ("disabled", "center")
    assert (upscale["width"].default, upscale["width"].minimum, upscale["width"].maximum) == (512, 0, 16384)
    by = specs("LatentUpscaleBy")["scale_by"]
    assert (by.default, by.minimum, by.maximum) == (1.5, 0.01, 8.0)
    from_batch = specs("LatentFromBatch")
    assert (from_batch["batch_index"].minimum, from_batch["batch_index"].maximum) == (-16384, 16384)
    assert (from_batch["length"].default, from_batch["length"].maximum) == (1, 64)
    assert (specs("RepeatLatentBatch")["amount"].default, specs("RepeatLatentBatch")["amount"].maximum) == (1, 64)
    assert [specs("LatentComposite")[n].default for n in ("x", "y", "feather")] == [0, 0, 0]
    assert specs("SaveLatent")["filename_prefix"].default == "latents/ComfyUI"


def test_pixel_sizes_step_by_8_in_the_editor_but_other_values_run_as_in_comfyui(env):
    # ComfyUI's widgets step by 8; its server accepts any size and divides by 8, rounding down.
    assert builtin_registry().get("EmptyLatentImage").Inputs.model_fields["width"].json_schema_extra == {"step": 8}
    Executor(env).validate(workflow(e=node("EmptyLatentImage", width=500, height=77, batch_size=1),
                                    s=node("SaveLatent", samples=["e", "LATENT"])))


# --- EmptyLatentImage ------------------------------------------------------------------------------------------


def test_empty_latent_image_is_zeros_of_a_sixty_fourth_of_the_pixels():
    result = EmptyLatentImage().run(None, width=512, height=768, batch_size=3)["LATENT"]
    assert result.samples.shape == (3, 4, 96, 64) and result.samples.dtype == torch.float32
    assert not result.samples.any() and result.noise_mask is None and result.batch_index is None
    assert EmptyLatentImage().run(None, width=500, height=77, batch_size=1)["LATENT"].samples.shape == (1, 4, 9, 62)


def test_empty_latent_and_empty_latent_image_make_the_same_latent():
    ours = EmptyLatent().run(None, width=64, height=128, batch_size=2)["latent"].samples
    comfy = EmptyLatentImage().run(None, width=64, height=128, batch_size=2)["LATENT"].samples
    assert torch.equal(ours, comfy)


def test_empty_latent_image_refuses_sizes_out_of_comfyuis_bounds(env):
    with pytest.raises(InvalidWorkflow) as failure:
        Executor(env).validate(workflow(e=node("EmptyLatentImage", width=8, height=16384 + 8, batch_size=0),
                                        s=node("SaveLatent", samples=["e", "LATENT"])))
    assert {(issue.node_id, issue.input) for issue in failure.value.issues} == {
        ("e", "width"), ("e", "height"), ("e", "batch_size")}


# --- LatentUpscale / LatentUpscaleBy --------------------------------------------------------------------------------


def test_latent_upscale_resizes_to_the_pixel_size_divided_by_8():
    source = latent(height=8, width=8)
    result = LatentUpscale().run(None, samples=source, upscale_method="bilinear", width=128, height=96,
                                 crop="disabled")["LATENT"].samples
    assert result.shape == (1, 4, 12, 16)
    assert torch.equal(result, F.interpolate(source.samples, size=(12, 16), mode="bilinear"))


def test_latent_upscale_with_a_side_of_0_keeps_the_aspect_ratio_and_both_0_keep_the_latent():
    source = latent(height=8, width=16)  # 128 x 64 pixels
    def size(width, height):
        return tuple(LatentUpscale().run(None, samples=source, upscale_method="nearest-exact", width=width,
                                         height=height, crop="disabled")["LATENT"].samples.shape[-2:])
    assert size(0, 128) == (16, 32)  # width follows: 16 * 128 / 8 = 256 pixels
    assert size(512, 0) == (32, 64)
    unchanged = LatentUpscale().run(None, samples=source, upscale_method="bislerp", width=0, height=0, crop="center")
    assert unchanged["LATENT"] is source


def test_latent_upscale_never_makes_a_side_smaller_than_64_pixels():
    result = LatentUpscale().run(None, samples=latent(), upscale_method="area", width=16, height=200,
                                 crop="disabled")["LATENT"].samples
    assert result.shape[-2:] == (25, 8)  # 200 // 8 rows; the width raised to 64 pixels


def test_latent_upscale_center_crop_cuts_the_overhang_before_resizing():
    source = latent(height=8, width=16)
    result = LatentUpscale().run(None, samples=source, upscale_method="nearest-exact", width=64, height=64,
                                 crop="center")["LATENT"].samples
    assert torch.equal(result, source.samples[..., 4:12])  # 2:1 -> 1:1 takes the middle half, then same size


def test_latent_upscale_keeps_the_noise_mask_and_batch_indices():
    mask = torch.ones(1, 64, 64)
    source = latent(noise_mask=mask, batch_index=(3,))
    result = LatentUpscale().run(None, samples=source, upscale_method="bicubic", width=128, height=128,
                                 crop="disabled")["LATENT"]
    assert result.noise_mask is mask and result.batch_index == (3,)
    by = LatentUpscaleBy().run(None, samples=source, upscale_method="bicubic", scale_by=2.0)["LATENT"]
    assert by.noise_mask is mask and by.batch_index == (3,)


def test_latent_upscale_by_rounds_each_side_as_python_does():
    source = latent(height=5, width=7)
    result = LatentUpscaleBy().run(None, samples=source, upscale_method="nearest-exact", scale_by=1.5)["LATENT"]
    assert result.samples.shape[-2:] == (round(7.5), round(10.5)) == (8, 10)
    with pytest.raises(ValueError, match="at least one latent cell"):
        LatentUpscaleBy().run(None, samples=source, upscale_method="nearest-exact", scale_by=0.05)


def reference_bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's bislerp written out cell by cell in float64: bilinear's two source cells and weight along each axis
    (width first), slerp of the channel vectors with linearly interpolated length."""
    def neighbours(old, new):
        def upper(k):  # each cell's right neighbour, the last one its own
            return k + 1 if k < old - 1 else old - 1
        result = []
        for i in range(new):
            source = max((i + 0.5) * old / new - 0.5, 0.0)  # bilinear's source position (align_corners=False)
            low = min(int(math.floor(source)), old - 1)
            high = min(low + 1, old - 1)
            weight = source - math.floor(source)
            position = low * (1 - weight) + high * weight
            upper_position = upper(low) * (1 - weight) + upper(high) * weight
            result.append((int(math.floor(position)), int(upper_position), position - math.floor(position)))
        return result

    def slerp(a, b, r):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        ua = a / na if na else np.zeros_like(a)
        ub = b / nb if nb else np.zeros_like(b)
        dot = float(ua @ ub)
        if dot > 1 - 1e-5:
            return a
        if dot < 1e-5 - 1:
            return a * (1 - r) + b * r
        omega = math.acos(dot)
        mixed = math.sin((1 - r) * omega) / math.sin(omega) * ua + math.sin(r * omega) / math.sin(omega) * ub
        return mixed * (na * (1 - r) + nb * r)

    x = samples.double().numpy()
    batch, channels, old_h, old_w = x.shape
    rows = np.zeros((batch, channels, old_h, width))
    for n in range(batch):
        for y in range(old_h):
            for i, (lo, hi, r) in enumerate(neighbours(old_w, width)):
                rows[n, :, y, i] = slerp(x[n, :, y, lo], x[n, :, y, hi], r)
    out = np.zeros((batch, channels, height, width))
    for n in range(batch):
        for xx in range(width):
            for j, (lo, hi, r) in enumerate(neighbours(old_h, height)):
                out[n, :, j, xx] = slerp(rows[n, :, lo, xx], rows[n, :, hi, xx], r)
    return torch.from_numpy(out).float()


@pytest.mark.parametrize("size", [(9, 13), (3, 5), (6, 4)])
def test_bislerp_matches_comfyuis_definition_cell_by_cell(size):
    source = torch.randn(2, 4, 6, 4, generator=torch.Generator().manual_seed(1))
    source[0, :, 1, 1] = 0.0  # a zero vector: its direction counts as none
    source[1, :, 2, 2] = source[1, :, 2, 3]  # equal neighbours: no slerp needed
    height, width = size
    assert torch.allclose(bislerp(source, width, height), reference_bislerp(source, width, height), atol=1e-5)


def test_bislerp_keeps_the_length_of_unit_vectors_where_bilinear_shrinks_it():
    angles = torch.linspace(0, math.pi, 4)
    unit = torch.stack([angles.cos(), angles.sin(), torch.zeros(4), torch.zeros(4)]).view(1, 4, 1, 4)
    unit = unit.expand(1, 4, 2, 4).contiguous()
    slerped = bislerp(unit, 7, 2).norm(dim=1)
    averaged = F.interpolate(unit, size=(2, 7), mode="bilinear").norm(dim=1)
    assert torch.allclose(slerped, torch.ones_like(slerped), atol=1e-5)
    assert averaged.min() < 0.95


def test_latent_upscale_with_bislerp_goes_through_bislerp():
    source = latent(height=4, width=6)
    result = LatentUpscale().run(None, samples=source, upscale_method="bislerp", width=96, height=64,
                                 crop="disabled")["LATENT"].samples
    assert torch.equal(result, bislerp(source.samples, 12, 8))


def test_latent_upscale_refuses_lanczos_which_comfyui_offers_for_images_only(env):
    flow = workflow(e=node("EmptyLatentImage"), u=node("LatentUpscale", samples=["e", "LATENT"],
                                                       upscale_method="lanczos", width=64, height=64, crop="disabled"),
                    s=node("SaveLatent", samples=["u", "LATENT"]))
    with pytest.raises(InvalidWorkflow) as failure:
        Executor(env).validate(flow)
    [issue] = failure.value.issues
    assert (issue.node_id, issue.input) == ("u", "upscale_method") and "bislerp" in issue.message


# --- batches ---------------------------------------------------------------------------------------------------------


def test_latent_from_batch_takes_a_slice_and_records_where_it_came_from():
    source = latent(batch=5)
    result = LatentFromBatch().run(None, samples=source, batch_index=1, length=3)["LATENT"]
    assert torch.equal(result.samples, source.samples[1:4]) and result.batch_index == (1, 2, 3)


def test_latent_from_batch_counts_negative_indices_from_the_end_and_clamps():
    source = latent(batch=4)
    def picked(index, length):
        return LatentFromBatch().run(None, samples=source, batch_index=index, length=length)["LATENT"].batch_index
    assert picked(-1, 1) == (3,)
    assert picked(-2, 5) == (2, 3)  # the length is cut where the batch ends
    assert picked(10, 2) == (3,)  # past the end: the last one
    assert picked(-10, 1) == (0,)


def test_latent_from_batch_keeps_the_indices_the_batch_already_had():
    source = latent(batch=3, batch_index=(7, 8, 9))
    assert LatentFromBatch().run(None, samples=source, batch_index=1, length=2)["LATENT"].batch_index == (8, 9)


def test_latent_from_batch_slices_per_item_masks_and_keeps_a_shared_one():
    shared = torch.rand(1, 16, 16)
    result = LatentFromBatch().run(None, samples=latent(batch=4, noise_mask=shared), batch_index=2, length=2)
    assert torch.equal(result["LATENT"].noise_mask, shared)
    per_item = torch.arange(4.0).view(4, 1, 1).expand(4, 16, 16)
    result = LatentFromBatch().run(None, samples=latent(batch=4, noise_mask=per_item), batch_index=1, length=2)
    assert result["LATENT"].noise_mask[:, 0, 0].tolist() == [1.0, 2.0]
    fewer = torch.arange(2.0).view(2, 1, 1).expand(2, 16, 16)  # 2 masks for 4 latents: cycled, as ComfyUI does
    result = LatentFromBatch().run(None, samples=latent(batch=4, noise_mask=fewer), batch_index=2, length=2)
    assert result["LATENT"].noise_mask[:, 0, 0].tolist() == [0.0, 1.0]


def test_repeat_latent_batch_repeats_the_whole_batch():
    source = latent(batch=2)
    result = RepeatLatentBatch().run(None, samples=source, amount=3)["LATENT"]
    assert torch.equal(result.samples, torch.cat([source.samples] * 3))
    assert result.batch_index is None  # the sampler numbers the items 0..5: every copy gets other noise


def test_repeat_latent_batch_gives_the_copies_indices_after_the_batchs_own():
    result = RepeatLatentBatch().run(None, samples=latent(batch=2, batch_index=(4, 6)), amount=3)["LATENT"]
    assert result.batch_index == (4, 6, 7, 9, 10, 12)  # offset = max - min + 1 = 3


def test_repeat_latent_batch_repeats_per_item_masks_only():
    shared = torch.rand(1, 8, 8)
    assert RepeatLatentBatch().run(None, samples=latent(batch=2, noise_mask=shared), amount=2)["LATENT"].noise_mask \
        is shared
    per_item = torch.rand(2, 8, 8)
    repeated = RepeatLatentBatch().run(None, samples=latent(batch=2, noise_mask=per_item), amount=3)["LATENT"]
    assert torch.equal(repeated.noise_mask, torch.cat([per_item] * 3))


# --- LatentComposite ---------------------------------------------------------------------------------------------


def test_latent_composite_pastes_at_the_pixel_offset_divided_by_8():
    to, source = latent(height=8, width=8, seed=1), latent(height=3, width=2, seed=2)
    result = LatentComposite().run(None, samples_to=to, samples_from=source, x=33, y=16, feather=0)["LATENT"].samples
    expected = to.samples.clone()
    expected[..., 2:5, 4:6] = source.samples
    assert torch.equal(result, expected)
    assert torch.equal(to.samples, latent(height=8, width=8, seed=1).samples)  # the input is not changed


def test_latent_composite_cuts_what_hangs_over_the_edge():
    to, source = latent(height=8, width=8, seed=1), latent(height=6, width=6, seed=2)
    result = LatentComposite().run(None, samples_to=to, samples_from=source, x=48, y=40, feather=0)["LATENT"].samples
    assert torch.equal(result[..., 5:, 6:], source.samples[..., :3, :2])
    assert torch.equal(result[..., :5, :], to.samples[..., :5, :])


def test_latent_composite_feathers_only_the_edges_inside_the_target():
    to, source = Latent(torch.zeros(1, 4, 10, 10)), Latent(torch.ones(1, 4, 4, 10))
    result = LatentComposite().run(None, samples_to=to, samples_from=source, x=0, y=24, feather=16)["LATENT"].samples
    # rows 3..6 get the source; its top and bottom edges lie inside the target and fade in over 2 cells; its left
    # and right edges are the target's own edges and do not fade
    assert result[0, 0, 3:7, 5].tolist() == [0.5, 1.0, 1.0, 0.5]
    assert result[0, 0, 3:7, 0].tolist() == [0.5, 1.0, 1.0, 0.5]
    assert not result[0, 0, :3].any() and not result[0, 0, 7:].any()


def test_latent_composite_keeps_samples_tos_mask_and_indices():
    mask = torch.ones(1, 8, 8)
    to = latent(noise_mask=mask, batch_index=(2,))
    result = LatentComposite().run(None, samples_to=to, samples_from=latent(seed=3), x=0, y=0, feather=0)["LATENT"]
    assert result.noise_mask is mask and result.batch_index == (2,)


def test_latent_composite_refuses_batches_that_do_not_match():
    with pytest.raises(ValueError, match="samples_from has 2 latents and samples_to 3"):
        LatentComposite().run(None, samples_to=latent(batch=3), samples_from=latent(batch=2), x=0, y=0, feather=0)


# --- SetLatentNoiseMask ---------------------------------------------------------------------------------------------


def test_set_latent_noise_mask_attaches_the_mask_and_keeps_the_rest():
    source = latent(batch_index=(1,))
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1
    result = SetLatentNoiseMask().run(None, samples=source, mask=mask)["LATENT"]
    assert result.noise_mask.shape == (1, 64, 64) and torch.equal(result.noise_mask[0], mask)
    assert result.samples is source.samples and result.batch_index == (1,)


# --- SaveLatent / LoadLatent -----------------------------------------------------------------------------------


def run_context(env, **fields) -> RunContext:
    return RunContext(env=env, node_id="save", workflow={}, **fields)


PROMPT = {"3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
UI_WORKFLOW = {"last_node_id": 3, "nodes": [{"id": 3, "type": "EmptyLatentImage"}]}


def test_save_latent_writes_comfyuis_safetensors_layout_with_the_prompt_and_workflow(env):
    source = latent(batch=2)
    ctx = run_context(env, prompt=PROMPT, extra_pnginfo={"workflow": UI_WORKFLOW})
    result = SaveLatent().run(ctx, samples=source, filename_prefix="latents/ComfyUI")
    assert set(result) == {"ui"}  # an output node without outputs, as ComfyUI's
    assert result["ui"] == {"latents": [{"filename": "ComfyUI_00001_.latent", "subfolder": "latents",
                                         "type": "output"}]}
    path = env.output_dir / "latents" / "ComfyUI_00001_.latent"
    with safetensors.safe_open(path, "pt") as file:
        assert sorted(file.keys()) == ["latent_format_version_0", "latent_tensor"]
        assert torch.equal(file.get_tensor("latent_tensor"), source.samples)
        assert file.get_tensor("latent_format_version_0").numel() == 0
        metadata = file.metadata()
    assert metadata == {"prompt": json.dumps(PROMPT), "workflow": json.dumps(UI_WORKFLOW)}


def test_save_latent_without_a_prompt_stores_an_empty_one(env):
    SaveLatent().run(run_context(env), samples=latent(), filename_prefix="plain")
    with safetensors.safe_open(env.output_dir / "plain_00001_.latent", "pt") as file:
        assert file.metadata() == {"prompt": ""}


def test_save_latent_numbers_on_from_any_file_of_the_same_prefix(env):
    (env.output_dir / "shot_00007_.png").write_bytes(b"")
    SaveLatent().run(run_context(env), samples=latent(), filename_prefix="shot")
    SaveLatent().run(run_context(env), samples=latent(), filename_prefix="shot")
    assert sorted(p.name for p in env.output_dir.iterdir()) == ["shot_00007_.png", "shot_00008_.latent",
                                                                "shot_00009_.latent"]


def test_a_failed_save_leaves_no_file_behind(env, monkeypatch):
    def no_space(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        SaveLatent().run(run_context(env), samples=latent(), filename_prefix="latents/x")
    assert all_files(env.output_dir) == []


@pytest.mark.parametrize("prefix", ["../outside", "/tmp/absolute", "a\\b"])
def test_save_latent_refuses_prefixes_that_leave_the_output_folder(env, prefix):
    flow = workflow(e=node("EmptyLatentImage"), s=node("SaveLatent", samples=["e", "LATENT"], filename_prefix=prefix))
    with pytest.raises(InvalidWorkflow) as failure:
        Executor(env).validate(flow)
    assert [(i.node_id, i.input) for i in failure.value.issues] == [("s", "filename_prefix")]


def test_save_latent_refuses_a_symlinked_folder_leading_out(env, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (env.output_dir / "latents").symlink_to(outside)
    flow = workflow(e=node("EmptyLatentImage"), s=node("SaveLatent", samples=["e", "LATENT"]))
    with pytest.raises(InvalidWorkflow):
        Executor(env).validate(flow)


def test_saved_latents_load_back_unchanged_from_the_input_folder(env):
    source = latent(batch=2, height=6, width=10)
    SaveLatent().run(run_context(env), samples=source, filename_prefix="latents/ComfyUI")
    (env.input_dir / "mine.latent").write_bytes((env.output_dir / "latents" / "ComfyUI_00001_.latent").read_bytes())
    assert builtin_registry().get("LoadLatent").input_specs()["latent"].allowed_choices(env) == ["mine.latent"]
    loaded = LoadLatent().run(run_context(env), latent="mine.latent")["LATENT"]
    assert torch.equal(loaded.samples, source.samples) and loaded.noise_mask is None


def test_load_latent_unscales_files_of_comfyuis_first_format(env):
    scaled = torch.randn(1, 4, 8, 8)
    save_file({"latent_tensor": scaled}, str(env.input_dir / "old.latent"))  # no latent_format_version_0
    loaded = LoadLatent().run(run_context(env), latent="old.latent")["LATENT"].samples
    assert torch.equal(loaded, scaled * (1.0 / 0.18215))


def test_load_latent_runs_a_saved_latent_through_a_workflow(env):
    (env.input_dir / "a.latent").write_bytes(latent_file_bytes(latent(seed=5).samples, {"prompt": ""}))
    flow = workflow(load=node("LoadLatent", latent="a.latent"),
                    big=node("LatentUpscaleBy", samples=["load", "LATENT"], upscale_method="bislerp", scale_by=2.0),
                    save=node("SaveLatent", samples=["big", "LATENT"], filename_prefix="out"))
    result = Executor(env).run(flow)
    assert result.outputs["save"]["latents"][0]["filename"] == "out_00001_.latent"
    with safetensors.safe_open(env.output_dir / "out_00001_.latent", "pt") as file:
        assert torch.equal(file.get_tensor("latent_tensor"), bislerp(latent(seed=5).samples, 16, 16))


def test_load_latent_never_unpickles_and_says_what_is_wrong(env, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    torch.save({"latent_tensor": Payload()}, env.input_dir / "pickled.latent")
    with pytest.raises(ValueError, match="pickled.latent is not a readable .latent file"):
        LoadLatent().run(run_context(env), latent="pickled.latent")
    assert not marker.exists()


def test_load_latent_refuses_files_without_latents_or_of_another_shape(env):
    save_file({"something": torch.zeros(2)}, str(env.input_dir / "other.latent"))
    with pytest.raises(ValueError, match="no 'latent_tensor' tensor"):
        LoadLatent().run(run_context(env), latent="other.latent")
    save_file({"latent_tensor": torch.zeros(1, 16, 8, 8), "latent_format_version_0": torch.tensor([])},
              str(env.input_dir / "sd3.latent"))
    with pytest.raises(ValueError, match=r"expected \[batch, 4, height, width\]"):
        LoadLatent().run(run_context(env), latent="sd3.latent")


def test_load_latent_offers_only_latent_files_and_refuses_traversal(env):
    (env.input_dir / "picture.png").write_bytes(b"")
    flow = workflow(load=node("LoadLatent", latent="../secret.latent"),
                    s=node("SaveLatent", samples=["load", "LATENT"]))
    with pytest.raises(InvalidWorkflow) as failure:
        Executor(env).validate(flow)
    assert [(i.node_id, i.input) for i in failure.value.issues] == [("load", "latent")]
    assert builtin_registry().get("LoadLatent").input_specs()["latent"].allowed_choices(env) == []
