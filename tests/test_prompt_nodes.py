"""Prompts in workflows: embeddings from the embeddings folders (found by name as ComfyUI finds them, missing ones
warned about, bad ones refused by file), CLIPSetLastLayer, and long prompts sampled against short negatives."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine_fixtures import env, sd_env  # noqa: F401
from engine_fixtures import CHECKPOINT_NAME, all_files, node, workflow
from nodegraph.executor import Executor, NodeFailed
from nodegraph.nodes import RunContext, builtin_registry
from nodegraph.sd import conditioning as cond
from nodegraph.sd import load_checkpoint

WIDTH = 128  # the tiny checkpoint's text encoder


@pytest.fixture(scope="module")
def sd(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)


def vectors(count: int, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def add_embedding(env, name: str, tensors: dict) -> None:
    path = env.models_dir / "embeddings" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)


def encode_node(env, clip, text: str, class_type: str = "CLIPTextEncode"):
    """(conditioning, warnings) of one prompt node run on its own."""
    warnings = []
    ctx = RunContext(env, "encode", {}, warn=warnings.append)
    if class_type == "CLIPTextEncode":
        (encoded,) = builtin_registry().get_comfy("CLIPTextEncode")().run(ctx, text=text, clip=clip)["CONDITIONING"]
    else:
        (encoded,) = builtin_registry().get("CLIPEncode")().run(ctx, clip=clip, text=text)["conditioning"]
    return encoded, warnings


def with_vectors(sd, text: str, table: dict) -> torch.Tensor:
    (encoded,) = cond.encode_text(sd, text, lambda name, **_: table.get(name))
    return encoded.context


# --- embeddings from the folders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("class_type", ["CLIPTextEncode", "CLIPEncode"])
def test_an_embedding_in_the_embeddings_folder_is_used_by_both_prompt_nodes(env, sd, class_type):
    add_embedding(env, "style.safetensors", {"emb_params": vectors(2)})
    encoded, warnings = encode_node(env, sd, "a (embedding:style:1.2) circle", class_type)
    expected = with_vectors(sd, "a (embedding:style:1.2) circle", {"style": vectors(2)})
    assert warnings == [] and torch.equal(encoded.context, expected)
    assert not torch.allclose(encoded.context, encode_node(env, sd, "a circle", class_type)[0].context)


@pytest.mark.parametrize("written", ["style", "style.safetensors", "sub/style", "sub/style.safetensors"])
def test_an_embedding_is_found_with_or_without_its_suffix_and_in_subfolders(env, sd, written):
    add_embedding(env, "sub/style.safetensors", {"emb_params": vectors(3)})
    encoded, warnings = encode_node(env, sd, f"embedding:{written} red")
    assert warnings == [] and torch.equal(encoded.context, with_vectors(sd, "embedding:x red", {"x": vectors(3)}))


def test_a_missing_embedding_is_left_out_and_the_user_is_warned(sd_env):
    events = []
    flow = prompt_flow("a embedding:nowhere red circle")
    Executor(sd_env).run(flow, on_event=events.append)
    (warning,) = [event for event in events if event.type == "warning"]
    assert warning.node_id == "pos" and "embedding:nowhere does not exist" in warning.message
    assert str(sd_env.models_dir / "embeddings") in warning.message


def test_a_missing_embedding_encodes_as_the_prompt_without_it(env, sd):
    encoded, warnings = encode_node(env, sd, "a embedding:nowhere red circle")
    assert len(warnings) == 1 and torch.equal(encoded.context, encode_node(env, sd, "a red circle")[0].context)


def test_an_embedding_of_another_width_is_left_out_with_a_warning_as_comfyui_does(env, sd):
    add_embedding(env, "sd2-style.safetensors", {"emb_params": vectors(2, 1024)})
    encoded, warnings = encode_node(env, sd, "a embedding:sd2-style red circle")
    assert len(warnings) == 1 and "embedding:sd2-style has 1024-wide vectors" in warnings[0]
    assert torch.equal(encoded.context, encode_node(env, sd, "a red circle")[0].context)


def test_a_corrupt_embedding_fails_the_node_naming_the_file(sd_env):
    (sd_env.models_dir / "embeddings").mkdir(parents=True)
    (sd_env.models_dir / "embeddings" / "broken.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(NodeFailed) as failure:
        Executor(sd_env).run(prompt_flow("embedding:broken red"))
    assert "broken.safetensors" in failure.value.message and "not a readable .safetensors" in failure.value.message


def test_a_pickled_embedding_needs_the_opt_in(env, sd):
    add_embedding(env, "old.pt", {"string_to_param": {"*": vectors(1)}, "name": "old", "step": 10})
    with pytest.raises(ValueError, match=r"old\.pt: is a Python pickle.*--allow-pickled-models"):
        encode_node(env, sd, "embedding:old red")
    allowed = dataclasses.replace(env, allow_pickled_models=True)
    encoded, warnings = encode_node(allowed, sd, "embedding:old red")
    assert warnings == [] and torch.equal(encoded.context, with_vectors(sd, "embedding:x red", {"x": vectors(1)}))


def test_a_changed_embedding_file_encodes_the_prompt_again(sd_env):
    add_embedding(sd_env, "style.safetensors", {"emb_params": vectors(2)})
    executor = Executor(sd_env)
    flow = prompt_flow("embedding:style red", steps=1)
    assert "pos" in executor.run(flow).executed
    assert executor.run(flow).executed == []  # nothing changed: all cached
    add_embedding(sd_env, "style.safetensors", {"emb_params": vectors(2, seed=1) + 1})
    assert "pos" in executor.run(flow).executed


# --- clip skip ----------------------------------------------------------------------------------------------------


def test_clip_set_last_layer_is_declared_as_comfyuis():
    declared = builtin_registry().get_comfy("CLIPSetLastLayer")
    assert (declared.DISPLAY_NAME, declared.CATEGORY, declared.OUTPUTS) == ("CLIP Set Last Layer", "conditioning",
                                                                           {"CLIP": "CLIP"})
    specs = declared.input_specs()
    assert [(s.name, s.type, s.default, s.minimum, s.maximum) for s in specs.values()] == [
        ("clip", "CLIP", None, None, None), ("stop_at_clip_layer", "INT", -1, -24, -1)]


def test_clip_set_last_layer_gives_a_new_clip_that_reads_an_earlier_layer(env, sd):
    ctx = RunContext(env, "skip", {})
    skipped = builtin_registry().get_comfy("CLIPSetLastLayer")().run(ctx, clip=sd, stop_at_clip_layer=-2)["CLIP"]
    assert skipped.clip_layer == -2 and sd.clip_layer is None and skipped.text_encoder is sd.text_encoder
    ids = sd.tokenizer(["a red circle"])
    expected = sd.text_encoder(ids, layer=-2)
    assert torch.equal(encode_node(env, skipped, "a red circle")[0].context, expected)
    assert not torch.allclose(encode_node(env, sd, "a red circle")[0].context, expected)
    last = builtin_registry().get_comfy("CLIPSetLastLayer")().run(ctx, clip=skipped, stop_at_clip_layer=-1)["CLIP"]
    assert torch.equal(encode_node(env, last, "a red circle")[0].context,
                       encode_node(env, sd, "a red circle")[0].context)


def test_a_layer_beyond_the_encoders_depth_fails_clearly(sd_env):
    with pytest.raises(NodeFailed) as failure:
        Executor(sd_env).run(prompt_flow("a red circle", clip_layer=-3))
    assert failure.value.node_id == "skip"
    assert "clip layer -3 does not exist: this text encoder has 2 layers" in failure.value.message


# --- long prompts in sampling ------------------------------------------------------------------------------------


def prompt_flow(positive: str, negative: str = "", clip_layer: int | None = None, steps: int = 2,
                seed: int = 3) -> dict:
    """txt2img with ComfyUI's CLIPTextEncode (and CLIPSetLastLayer before it, given a layer) and KSampler at cfg 6."""
    clip = ["ckpt", "CLIP"]
    nodes = dict(ckpt=node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT_NAME))
    if clip_layer is not None:
        nodes["skip"] = node("CLIPSetLastLayer", clip=clip, stop_at_clip_layer=clip_layer)
        clip = ["skip", "CLIP"]
    nodes.update(
        pos=node("CLIPTextEncode", text=positive, clip=clip),
        neg=node("CLIPTextEncode", text=negative, clip=clip),
        empty=node("EmptyLatentImage", width=64, height=64, batch_size=1),
        sample=node("KSampler", model=["ckpt", "MODEL"], seed=seed, steps=steps, cfg=6.0, sampler_name="euler",
                    scheduler="normal", positive=["pos", "CONDITIONING"], negative=["neg", "CONDITIONING"],
                    latent_image=["empty", "LATENT"], denoise=1.0),
        decode=node("VAEDecode", vae=["ckpt", "VAE"], latent=["sample", "LATENT"]),
        save=node("SaveImage", images=["decode", "image"], prefix="prompt"),
    )
    return workflow(**nodes)


def saved_pixels(folder) -> np.ndarray:
    (path,) = all_files(folder)
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    path.unlink()
    return pixels


def test_a_long_positive_samples_with_a_short_negative_and_its_second_chunk_counts(sd_env, sd):
    first = ", ".join(["a red circle"] * 19) + ","  # 76 tokens: the second chunk starts after it
    long = first + " a blue square on a green background"
    assert cond.encode_text(sd, long)[0].context.shape == (1, 154, WIDTH)
    executor = Executor(sd_env)
    executor.run(prompt_flow(long, negative="blurry"))
    with_second_chunk = saved_pixels(sd_env.output_dir)
    executor.run(prompt_flow(first, negative="blurry"))
    first_chunk_only = saved_pixels(sd_env.output_dir)
    assert np.abs(with_second_chunk - first_chunk_only).mean() > 0.5
    executor.run(prompt_flow("blurry", negative=long))  # and the other way round
    assert saved_pixels(sd_env.output_dir).shape == (64, 64, 3)


def test_clip_skip_changes_the_picture(sd_env):
    executor = Executor(sd_env)
    executor.run(prompt_flow("a red circle", clip_layer=-1))
    last = saved_pixels(sd_env.output_dir)
    executor.run(prompt_flow("a red circle"))
    assert np.array_equal(saved_pixels(sd_env.output_dir), last)  # -1 is what a plain CLIP reads
    executor.run(prompt_flow("a red circle", clip_layer=-2))
    assert np.abs(saved_pixels(sd_env.output_dir) - last).mean() > 0.5
