"""The demo LoRA and the demo embedding that ship with the package teach the demo checkpoint what it does not know,
judged by the demo's classifier (tools/demo_quality.py) on pictures made through the real nodes (CheckpointLoaderSimple,
LoraLoader, CLIPTextEncode, KSampler, VAEDecode), with an empty models folder."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from nodegraph.model_folders import PACKAGED_MODELS, embedding_names, list_models
from nodegraph.sd import load_checkpoint
from nodegraph.sd.lora import match_lora, read_lora_file
from tools.demo_quality import BACKGROUNDS, COLOURS, DEMO, SHAPES, classify, draw, sees_sunset
from tools.lora_demo_grid import EMBEDDING, LORA, RING_PROMPTS, fresh_environment, pictures

ROOT = Path(__file__).resolve().parent.parent
SEEDS = range(12)
# The demo's own shapes, to see that the LoRA leaves them be.
DEMO_PROMPTS = [f"a {COLOURS[i % 8]} {SHAPES[i % 3]} on a {list(BACKGROUNDS)[(i // 3) % 3]} background" for i in SEEDS]


@pytest.fixture
def fresh_env(tmp_path):
    return fresh_environment(tmp_path)


def test_the_classifier_tells_rings_from_the_demo_shapes():
    for colour in ((220, 30, 30), (30, 60, 220), (240, 220, 30)):
        for background in BACKGROUNDS.values():
            assert classify(draw(colour, "ring", background))["shape"] == "ring"
            assert [classify(draw(colour, shape, background))["shape"] for shape in SHAPES] == SHAPES


def test_the_classifier_sees_the_sunset_only_where_it_is():
    orange, black = (245, 140, 20), BACKGROUNDS["black"]
    sun = np.roll(draw(orange, "circle", black), 14, axis=0)  # moved down to where the embedding puts it
    assert sees_sunset(classify(sun))
    assert not sees_sunset(classify(draw(orange, "circle", black)))  # in the middle
    assert not sees_sunset(classify(np.roll(draw(orange, "square", black), 14, axis=0)))
    assert not sees_sunset(classify(np.roll(draw(orange, "circle", BACKGROUNDS["gray"]), 14, axis=0)))


def test_the_demo_files_are_offered_with_an_empty_models_folder(fresh_env):
    assert LORA in list_models(fresh_env, "loras")
    assert EMBEDDING in embedding_names(fresh_env)


def test_the_demo_lora_is_kohya_with_ldm_names_and_the_embedding_a1111():
    with safe_open(PACKAGED_MODELS["loras"][LORA], framework="pt") as file:
        keys = set(file.keys())
        modules = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in keys}
        assert keys == {f"{m}.{suffix}" for m in modules for suffix in ("lora_down.weight", "lora_up.weight", "alpha")}
        assert all(m.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_",
                                 "lora_te_text_model_encoder_layers_")) for m in modules)
        assert any(m.startswith("lora_te_") for m in modules) and any(m.startswith("lora_unet_") for m in modules)
        alpha, down = file.get_tensor(f"{min(modules)}.alpha"), file.get_tensor(f"{min(modules)}.lora_down.weight")
        assert alpha.item() / down.shape[0] == 0.5  # alpha 2, rank 4: a loader must scale by alpha / rank
    with safe_open(PACKAGED_MODELS["embeddings"][f"{EMBEDDING}.safetensors"], framework="pt") as file:
        assert list(file.keys()) == ["emb_params"] and file.get_slice("emb_params").get_shape() == [4, 64]


def test_every_key_of_the_demo_lora_changes_a_layer_of_the_demo_checkpoint():
    demo = load_checkpoint(DEMO, device="cpu", dtype=torch.float32)
    path = PACKAGED_MODELS["loras"][LORA]
    patches = match_lora(path, read_lora_file(path), unet=demo.unet, text_encoder=demo.text_encoder)
    assert patches.unmatched == ()
    # 6 spatial transformers x 12 (proj_in, proj_out, 8 attention projections, 2 feed-forward); 3 CLIP layers x 6
    assert len(patches.unet) == 72 and len(patches.text_encoder) == 18


@pytest.mark.slow
def test_the_demo_lora_draws_rings_at_strength_1_and_never_at_0(fresh_env):
    with_lora = [classify(p) for p in pictures(fresh_env, RING_PROMPTS, lora_strength=1.0)]
    without = [classify(p) for p in pictures(fresh_env, RING_PROMPTS, lora_strength=0.0)]
    assert sum(seen["shape"] == "ring" for seen in with_lora) >= 0.9 * len(SEEDS), [s["shape"] for s in with_lora]
    assert not any(seen["shape"] == "ring" for seen in without), [s["shape"] for s in without]
    # The rest of the prompt still holds: the backgrounds, and most colours. (The demo VAE, which learnt filled
    # shapes, keeps the colour of only 16 of 24 drawn rings through encode and decode: a ceiling no LoRA passes.)
    backgrounds = [prompt.split()[-2] for prompt in RING_PROMPTS]
    assert [seen["background"] for seen in with_lora] == backgrounds
    assert sum(seen["colour"] == prompt.split()[1] for seen, prompt in zip(with_lora, RING_PROMPTS)) >= 8


@pytest.mark.slow
def test_the_demo_lora_leaves_the_demo_shapes_be(fresh_env):
    seen = [classify(p)["shape"] for p in pictures(fresh_env, DEMO_PROMPTS, lora_strength=1.0)]
    assert "ring" not in seen
    assert sum(s == prompt.split()[2] for s, prompt in zip(seen, DEMO_PROMPTS)) >= 9, seen


@pytest.mark.slow
def test_the_demo_embedding_gives_the_sunset_and_its_absence_does_not(fresh_env):
    with_embedding = pictures(fresh_env, [f"embedding:{EMBEDDING}"] * len(SEEDS))
    without = pictures(fresh_env, ["a sunset"] * 6 + [""] * 6)
    assert sum(sees_sunset(classify(p)) for p in with_embedding) >= 0.9 * len(SEEDS)
    assert not any(sees_sunset(classify(p)) for p in without)


@pytest.mark.parametrize("workflow, taught", [("lora.json", lambda seen: seen["shape"] == "ring"
                                                and (seen["colour"], seen["background"]) == ("blue", "white")),
                                               ("embedding.json", sees_sunset)])
def test_the_shipped_workflow_runs_on_a_fresh_folder(tmp_path, workflow, taught):
    done = subprocess.run([sys.executable, "-m", "nodegraph", "run", str(ROOT / "workflows" / workflow),
                           "--models", str(tmp_path / "models"), "--output", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr  # every LoRA key matched, the embedding was found
    written = [Path(line) for line in done.stdout.split()]
    assert len(written) == 1 and written[0].is_file()
    assert taught(classify(np.asarray(Image.open(written[0]).convert("RGB"))))
