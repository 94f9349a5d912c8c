"""ComfyUI's LoraLoader and LoraLoaderModelOnly on the tiny random checkpoint: patched views of the loaded model
(which stays as loaded), stacking, strength 0 as the input itself, strength changes that re-patch without loading
anything again, unmatched keys warned, bad files and names refused."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import lora_files as lf
import nodegraph.nodes.loaders as loaders
import nodegraph.nodes.lora as lora_nodes
from engine_fixtures import CHECKPOINT_NAME, all_files, env, node, sd_env, txt2img  # noqa: F401
from nodegraph.cli import main
from nodegraph.executor import Executor, NodeFailed
from nodegraph.nodes import Environment, RunContext, builtin_registry
from nodegraph.nodes.loaders import load_checkpoint_named
from nodegraph.workflow import InvalidWorkflow

STYLE, ATTENTION = "style.safetensors", "attention.safetensors"


def dense(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.to_dense() if parameter.is_mkldnn else parameter


@pytest.fixture(scope="module")
def weights(tiny_checkpoint):
    return lf.base_weights(tiny_checkpoint)


@pytest.fixture
def lora_env(sd_env, weights):
    """sd_env with two LoRAs in models/loras: STYLE over every target layer of both parts, ATTENTION over the UNet's
    attention layers; {file name: {(part, layer): entry}} of what each must do."""
    lora_nodes.LOADED.clear()
    layers = lf.targets(weights)
    generator = torch.Generator().manual_seed(3)
    made = {}
    for name, keep in ((STYLE, lambda part, layer: True), (ATTENTION, lambda part, layer: part == "unet" and ".attn" in layer)):
        entries = {(part, layer): lf.lora(weights[part][layer], generator, rank=4, alpha=2.0)
                   for part in layers for layer in layers[part] if keep(part, layer)}
        lf.write_lora(sd_env.models_dir / "loras" / name, {lf.kohya_name(*key): e for key, e in entries.items()})
        made[name] = entries
    return sd_env, made


def context(env: Environment, warnings: list | None = None) -> RunContext:
    return RunContext(env, "lora", {}, warn=(warnings if warnings is not None else []).append)


def with_lora(flow: dict, lora_name: str = STYLE, strength_model: float = 1.0, strength_clip: float = 1.0,
              node_id: str = "lora", source: str = "ckpt") -> dict:
    """`flow` (txt2img's shape) with a LoraLoader between `source` and what used its model and clip."""
    flow = copy.deepcopy(flow)
    outputs = {"model": "MODEL", "clip": "CLIP"} if source == "ckpt" else {"MODEL": "MODEL", "CLIP": "CLIP"}
    model_out, clip_out = list(outputs)
    for spec in flow["nodes"].values():
        for key, value in spec["inputs"].items():
            if value == [source, model_out]:
                spec["inputs"][key] = [node_id, "MODEL"]
            elif value == [source, clip_out]:
                spec["inputs"][key] = [node_id, "CLIP"]
    flow["nodes"][node_id] = node("LoraLoader", model=[source, model_out], clip=[source, clip_out],
                                  lora_name=lora_name, strength_model=strength_model, strength_clip=strength_clip)
    return flow


def pixels(env: Environment) -> dict[str, bytes]:
    """The saved pictures by file-name prefix."""
    out = {}
    for path in all_files(env.output_dir):
        with Image.open(path) as image:
            out[path.name.split("_")[0]] = image.tobytes()
    return out


def test_lora_loader_applies_the_lora_to_model_and_text_encoder_by_its_formula(lora_env, weights):
    env, made = lora_env
    sd = load_checkpoint_named(env, CHECKPOINT_NAME)
    warnings = []
    result = lora_nodes.LoraLoader().run(context(env, warnings), model=sd, clip=sd, lora_name=STYLE,
                                         strength_model=0.8, strength_clip=-0.5)
    model, clip = result["MODEL"], result["CLIP"]
    assert warnings == []
    for (part, layer), entry in made[STYLE].items():
        module, strength = (model.unet, 0.8) if part == "unet" else (clip.text_encoder, -0.5)
        torch.testing.assert_close(dense(module.get_parameter(layer + ".weight")),
                                   entry.expected(weights[part][layer], strength), rtol=0, atol=1e-6)
    # each output changes only its own part; everything else is the loaded model's
    assert model.text_encoder is sd.text_encoder and model.vae is sd.vae and clip.unet is sd.unet
    changed = {layer + ".weight" for part, layer in made[STYLE] if part == "unet"}
    for name, parameter in sd.unet.named_parameters():
        assert (model.unet.get_parameter(name) is parameter) == (name not in changed)


def test_the_loaded_checkpoint_is_left_as_it_was(lora_env):
    env, _ = lora_env
    sd = load_checkpoint_named(env, CHECKPOINT_NAME)
    before = {name: dense(p).clone() for name, p in [*sd.unet.named_parameters(), *sd.text_encoder.named_parameters()]}
    lora_nodes.LoraLoader().run(context(env), model=sd, clip=sd, lora_name=STYLE, strength_model=1.0, strength_clip=1.0)
    after = dict([*sd.unet.named_parameters(), *sd.text_encoder.named_parameters()])
    assert all(torch.equal(dense(after[name]), value) for name, value in before.items())


def test_strength_zero_returns_the_inputs_themselves(lora_env):
    env, _ = lora_env
    sd = load_checkpoint_named(env, CHECKPOINT_NAME)
    both = lora_nodes.LoraLoader().run(context(env), model=sd, clip=sd, lora_name=STYLE, strength_model=0.0,
                                       strength_clip=0.0)
    assert both["MODEL"] is sd and both["CLIP"] is sd
    clip_only = lora_nodes.LoraLoader().run(context(env), model=sd, clip=sd, lora_name=STYLE, strength_model=0.0,
                                            strength_clip=1.0)
    assert clip_only["MODEL"] is sd and clip_only["CLIP"].text_encoder is not sd.text_encoder
    assert lora_nodes.LoraLoaderModelOnly().run(context(env), model=sd, lora_name=STYLE, strength_model=0.0)["MODEL"] is sd


def test_strength_zero_in_a_workflow_gives_the_base_picture_exactly(lora_env):
    env, _ = lora_env
    executor = Executor(env)
    executor.run(txt2img(prefix="base"))
    executor.run(with_lora(txt2img(prefix="zero"), strength_model=0.0, strength_clip=0.0))
    executor.run(with_lora(txt2img(prefix="full")))
    saved = pixels(env)
    assert saved["zero"] == saved["base"] and saved["full"] != saved["base"]


def test_stacked_loaders_add_both_loras_computed_from_the_base(lora_env, weights):
    env, made = lora_env
    sd = load_checkpoint_named(env, CHECKPOINT_NAME)
    first = lora_nodes.LoraLoader().run(context(env), model=sd, clip=sd, lora_name=STYLE, strength_model=0.5,
                                        strength_clip=1.0)
    second = lora_nodes.LoraLoaderModelOnly().run(context(env), model=first["MODEL"], lora_name=ATTENTION,
                                                  strength_model=2.0)["MODEL"]
    for layer in {layer for part, layer in [*made[STYLE], *made[ATTENTION]] if part == "unet"}:
        want = weights["unet"][layer]
        if ("unet", layer) in made[STYLE]:
            want = made[STYLE]["unet", layer].expected(want, 0.5)
        if ("unet", layer) in made[ATTENTION]:
            want = made[ATTENTION]["unet", layer].expected(want, 2.0)
        torch.testing.assert_close(dense(second.unet.get_parameter(layer + ".weight")), want, rtol=0, atol=2e-6)
    assert second.text_encoder is sd.text_encoder  # model-only: the text encoder is not touched


@pytest.fixture
def counted_loads(monkeypatch):
    calls = []
    real = loaders.load_checkpoint
    monkeypatch.setattr(loaders, "load_checkpoint", lambda path, **kw: calls.append(path) or real(path, **kw))
    return calls


def test_changing_a_strength_repatches_without_loading_the_checkpoint_or_the_lora_again(lora_env, counted_loads):
    env, _ = lora_env
    executor = Executor(env)
    ran = []
    executor.run(with_lora(txt2img(prefix="a"), strength_model=1.0), on_event=lambda e: ran.append(e))
    ran.clear()
    executor.run(with_lora(txt2img(prefix="b"), strength_model=0.5), on_event=lambda e: ran.append(e))
    executed = [e.node_id for e in ran if e.type == "executing" and e.node_id]
    assert "ckpt" not in executed and "lora" in executed
    assert len(counted_loads) == 1 and lora_nodes.LOADED.reads == 1
    saved = pixels(env)
    assert saved["a"] != saved["b"]


def test_a_replaced_lora_file_is_read_again(lora_env, weights):
    env, _ = lora_env
    executor = Executor(env)
    executor.run(with_lora(txt2img()))
    path = env.models_dir / "loras" / STYLE
    lf.write_lora(path, {lf.kohya_name("unet", "out.2"): lf.lora(weights["unet"]["out.2"], torch.Generator(), 2)})
    executor.run(with_lora(txt2img(prefix="again")))
    assert lora_nodes.LOADED.reads == 2


def test_keys_that_match_nothing_are_warned_on_the_event_stream_and_the_cli(lora_env, tmp_path, capsys):
    env, _ = lora_env
    path = env.models_dir / "loras" / STYLE
    tensors = load_file(str(path)) | {"lora_unet_no_such_layer.lora_up.weight": torch.zeros(2, 2),
                                      "lora_unet_input_blocks_1_1_norm.oft_blocks": torch.zeros(2, 2)}
    save_file(tensors, str(env.models_dir / "loras" / "extra.safetensors"))
    events = []
    Executor(env).run(with_lora(txt2img(), "extra.safetensors"), on_event=events.append)
    warnings = [e for e in events if e.type == "warning"]
    assert len(warnings) == 1 and warnings[0].node_id == "lora" and warnings[0].node_type == "LoraLoader"
    message = warnings[0].message
    assert "2 key(s)" in message and "extra.safetensors" in message
    assert "lora_unet_no_such_layer.lora_up.weight" in message and "lora_unet_input_blocks_1_1_norm.oft_blocks" in message
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps(with_lora(txt2img(prefix="cli"), "extra.safetensors")))
    assert main(["run", str(flow), "--models", str(env.models_dir), "--output", str(env.output_dir), "--quiet",
                 "--device", "cpu"]) == 0
    assert "warning: node 'lora' (LoraLoader): 2 key(s)" in capsys.readouterr().err


def test_model_only_leaves_text_encoder_keys_unapplied_without_warning_and_warns_a_lora_with_no_unet_part(lora_env,
                                                                                                       weights):
    env, made = lora_env
    sd = load_checkpoint_named(env, CHECKPOINT_NAME)
    warnings = []
    model = lora_nodes.LoraLoaderModelOnly().run(context(env, warnings), model=sd, lora_name=STYLE,
                                                 strength_model=1.0)["MODEL"]
    assert warnings == [] and model.text_encoder is sd.text_encoder and model.unet is not sd.unet
    layer = "text_model.encoder.layers.0.mlp.fc1"
    lf.write_lora(env.models_dir / "loras" / "text.safetensors",
                  {lf.kohya_name("text_encoder", layer): lf.lora(weights["text_encoder"][layer], torch.Generator())})
    same = lora_nodes.LoraLoaderModelOnly().run(context(env, warnings), model=sd, lora_name="text.safetensors",
                                                strength_model=1.0)["MODEL"]
    assert same is sd
    assert warnings == ["text.safetensors has no weights for the diffusion model: strength_model changes nothing"]


TRUNCATED_HEADER = b'{"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}'


@pytest.mark.parametrize("content,problem", [
    (b"\x00" * 64, "not a readable .safetensors file"),
    (len(TRUNCATED_HEADER).to_bytes(8, "little") + TRUNCATED_HEADER + b"\0" * 100, "truncated"),
])
def test_a_bad_lora_file_fails_the_node_naming_the_file_and_writes_nothing(lora_env, content, problem):
    env, _ = lora_env
    (env.models_dir / "loras" / "bad.safetensors").write_bytes(content)
    with pytest.raises(NodeFailed) as failure:
        Executor(env).run(with_lora(txt2img(), "bad.safetensors"))
    assert failure.value.node_id == "lora" and "LoraError" in str(failure.value)
    assert "bad.safetensors" in str(failure.value) and problem in str(failure.value)
    assert all_files(env.output_dir) == []


def test_a_lora_for_another_model_family_fails_naming_the_file(lora_env):
    env, _ = lora_env
    save_file({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4),
               "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8)},
              str(env.models_dir / "loras" / "sdxl.safetensors"))
    with pytest.raises(NodeFailed, match=r"sdxl.safetensors: .*second text encoder"):
        Executor(env).run(with_lora(txt2img(), "sdxl.safetensors"))
    assert all_files(env.output_dir) == []


def test_an_unknown_lora_name_or_an_out_of_bounds_strength_is_refused_before_running(lora_env):
    env, _ = lora_env
    executor = Executor(env)
    with pytest.raises(InvalidWorkflow, match="nope.safetensors") as invalid:
        executor.run(with_lora(txt2img(), "nope.safetensors"))
    assert "loras" in str(invalid.value) and STYLE in str(invalid.value)
    with pytest.raises(InvalidWorkflow, match="strength_model"):
        executor.run(with_lora(txt2img(), strength_model=100.5))
    assert all_files(env.output_dir) == []


def test_pickled_loras_are_offered_and_read_only_with_the_opt_in(lora_env):
    env, _ = lora_env
    torch.save(load_file(str(env.models_dir / "loras" / STYLE)), env.models_dir / "loras" / "old.pt")
    with pytest.raises(InvalidWorkflow, match="old.pt"):
        Executor(env).run(with_lora(txt2img(), "old.pt"))
    allowed = dataclasses.replace(env, allow_pickled_models=True)
    Executor(allowed).run(with_lora(txt2img(prefix="pickled"), "old.pt"))
    Executor(allowed).run(with_lora(txt2img(prefix="safe"), STYLE))
    saved = pixels(env)
    assert saved["pickled"] == saved["safe"]


def test_the_nodes_have_comfyuis_names_inputs_and_bounds():
    registry = builtin_registry()
    loader, model_only = registry.get_comfy("LoraLoader"), registry.get_comfy("LoraLoaderModelOnly")
    assert loader.DISPLAY_NAME == "Load LoRA" and loader.CATEGORY == model_only.CATEGORY == "loaders"
    assert list(loader.input_specs()) == ["model", "clip", "lora_name", "strength_model", "strength_clip"]
    assert list(model_only.input_specs()) == ["model", "lora_name", "strength_model"]
    assert list(loader.OUTPUTS.values()) == ["MODEL", "CLIP"] and list(model_only.OUTPUTS.values()) == ["MODEL"]
    for spec in (loader.input_specs()["strength_model"], loader.input_specs()["strength_clip"],
                 model_only.input_specs()["strength_model"]):
        assert (spec.default, spec.minimum, spec.maximum, spec.step) == (1.0, -100.0, 100.0, 0.01)


def test_comfyuis_lora_templates_run_unchanged(tmp_path, tiny_checkpoint, weights):
    """ComfyUI's own SD1.5 templates lora.json (one LoraLoader, a second one bypassed) and lora_multiple.json (two
    chained), as shipped, with the tiny checkpoint and random LoRAs under the names they ask for; sizes and steps cut
    with --set. The LoRAs show: with all four strengths set to 0 the picture is another."""
    templates = pytest.importorskip("comfyui_workflow_templates")
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "dreamshaper_8.safetensors").symlink_to(tiny_checkpoint)
    layers = lf.targets(weights)
    generator = torch.Generator().manual_seed(9)
    for name in ("MoXinV1.safetensors", "blindbox_v1_mix.safetensors"):
        lf.write_lora(models / "loras" / name, {lf.kohya_name(part, layer): lf.lora(weights[part][layer], generator)
                                                for part in layers for layer in layers[part]})
    small = ["--set", "5.width=64", "--set", "5.height=64", "--set", "3.steps=2", "--device", "cpu", "--quiet"]

    def run(template: str, out: str, *settings: str) -> bytes:
        source = Path(templates.__file__).parent / "templates" / template
        assert main(["run", str(source), "--models", str(models), "--output", str(tmp_path / out), *small,
                     *settings]) == 0
        [png] = all_files(tmp_path / out)
        with Image.open(png) as image:
            return image.tobytes()

    run("lora.json", "one")
    with_both = run("lora_multiple.json", "two")
    zero = [value for n in ("10", "11") for key in ("strength_model", "strength_clip")
            for value in ("--set", f"{n}.{key}=0.0")]
    without = run("lora_multiple.json", "none", *zero)
    assert with_both != without
