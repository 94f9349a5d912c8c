"""ComfyUI's model loaders: CheckpointLoaderSimple (one loader with our LoadCheckpoint) and VAELoader, on checkpoints
found through symlinks and extra_model_paths.yaml."""

import copy
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import nodegraph.nodes.loaders as loaders
from checkpoints import TinyConfig, build_state_dict
from engine_fixtures import CHECKPOINT_NAME, all_files, env, node, sd_env, txt2img  # noqa: F401
from nodegraph.cli import main
from nodegraph.executor import Executor
from nodegraph.extra_model_paths import read_extra_model_paths
from nodegraph.nodes import Environment, builtin_registry
from nodegraph.sd.checkpoint import CheckpointError, load_checkpoint, load_vae
from nodegraph.workflow import InvalidWorkflow

REPO = Path(__file__).parent.parent
VAE_PREFIX = "first_stage_model."


@pytest.fixture
def load_count(monkeypatch):
    """The paths of the checkpoint files actually loaded."""
    calls = []
    real = loaders.load_checkpoint

    def counting_load(path, **kwargs):
        calls.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(loaders, "load_checkpoint", counting_load)
    return calls


def comfy_loader(flow: dict, name: str = CHECKPOINT_NAME) -> dict:
    """`flow` (from txt2img) loading its checkpoint with ComfyUI's CheckpointLoaderSimple."""
    flow = copy.deepcopy(flow)
    flow["nodes"]["ckpt"] = node("CheckpointLoaderSimple", ckpt_name=name)
    for spec in flow["nodes"].values():
        for key, value in spec["inputs"].items():
            if isinstance(value, list) and value[0] == "ckpt":
                spec["inputs"][key] = ["ckpt", value[1].upper()]
    return flow


def with_vae_loader(flow: dict, vae_name: str) -> dict:
    flow = copy.deepcopy(flow)
    flow["nodes"]["vae"] = node("VAELoader", vae_name=vae_name)
    flow["nodes"]["decode"]["inputs"]["vae"] = ["vae", "VAE"]
    return flow


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def saved_pixels(env: Environment) -> list[bytes]:
    return [pixels(path) for path in all_files(env.output_dir)]


def write_vae(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path


def vae_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's VAE as a standalone file has it: first_stage_model.* without the prefix."""
    return {key[len(VAE_PREFIX):]: value for key, value in state.items() if key.startswith(VAE_PREFIX)}


# --- the nodes as ComfyUI declares them -----------------------------------------------------------------------------


def test_checkpoint_loader_simple_has_comfyuis_name_input_and_outputs():
    node_class = builtin_registry().get_comfy("CheckpointLoaderSimple")
    assert node_class.DISPLAY_NAME == "Load Checkpoint"
    assert list(node_class.input_specs()) == ["ckpt_name"]
    assert list(node_class.OUTPUTS.items()) == [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]


def test_vae_loader_has_comfyuis_name_input_and_output():
    node_class = builtin_registry().get_comfy("VAELoader")
    assert node_class.DISPLAY_NAME == "Load VAE"
    assert list(node_class.input_specs()) == ["vae_name"] and node_class.OUTPUTS == {"VAE": "VAE"}


def test_both_checkpoint_loaders_offer_the_same_files(sd_env):
    registry = builtin_registry()
    ours = registry.get("LoadCheckpoint").input_specs()["name"].allowed_choices(sd_env)
    theirs = registry.get_comfy("CheckpointLoaderSimple").input_specs()["ckpt_name"].allowed_choices(sd_env)
    assert ours == theirs == ["demo-shapes.safetensors", CHECKPOINT_NAME]


def test_checkpoint_loader_simple_and_load_checkpoint_make_the_same_image(sd_env, load_count):
    Executor(sd_env).run(txt2img(seed=3))
    Executor(sd_env).run(comfy_loader(txt2img(seed=3)))
    ours, theirs = saved_pixels(sd_env)
    assert ours == theirs
    assert len(load_count) == 2  # one function behind both: each run went through it


# --- checkpoints found through symlinks and extra_model_paths.yaml --------------------------------------------------


def choices(env: Environment) -> list[str]:
    return builtin_registry().get_comfy("CheckpointLoaderSimple").input_specs()["ckpt_name"].allowed_choices(env)


def test_a_symlinked_checkpoint_is_offered_and_runs(env, tiny_checkpoint):
    os.symlink(tiny_checkpoint, env.checkpoints_dir / "linked.safetensors")
    assert "linked.safetensors" in choices(env)
    result = Executor(env).run(comfy_loader(txt2img(), "linked.safetensors"))
    assert result.outputs["save"]["images"]


def test_a_checkpoint_in_a_symlinked_folder_is_offered_and_runs(env, tiny_checkpoint):
    os.symlink(tiny_checkpoint.parent, env.checkpoints_dir / "shared")
    name = f"shared/{tiny_checkpoint.name}"
    assert name in choices(env)
    assert Executor(env).run(comfy_loader(txt2img(), name)).outputs["save"]["images"]


def test_a_checkpoint_in_a_yaml_folder_is_offered_and_runs(env, tiny_checkpoint, tmp_path):
    yaml_file = tmp_path / "extra_model_paths.yaml"
    yaml_file.write_text(f"a111:\n  base_path: {tiny_checkpoint.parent.parent}\n"
                         f"  checkpoints: {tiny_checkpoint.parent.name}\n")
    env = dataclasses.replace(env, extra_model_paths=read_extra_model_paths(yaml_file))
    assert tiny_checkpoint.name in choices(env)
    assert Executor(env).run(comfy_loader(txt2img(), tiny_checkpoint.name)).outputs["save"]["images"]


def test_traversal_names_are_refused_while_validating(env, tiny_checkpoint):
    os.symlink(tiny_checkpoint.parent, env.checkpoints_dir / "shared")
    for name in ("../outside.safetensors", f"shared/../{CHECKPOINT_NAME}", "/etc/passwd", "a\\b.safetensors"):
        with pytest.raises(InvalidWorkflow) as error:
            Executor(env).validate(comfy_loader(txt2img(), name))
        [issue] = error.value.issues
        assert (issue.code, issue.node_id, issue.input) == ("not_in_choices", "ckpt", "ckpt_name")


def test_a_re_pointed_symlink_is_loaded_again(env, tiny_checkpoint, tmp_path, load_count):
    other = tmp_path / "other.safetensors"
    other.write_bytes(tiny_checkpoint.read_bytes())
    link = env.checkpoints_dir / "current.safetensors"
    os.symlink(tiny_checkpoint, link)
    executor = Executor(env)
    executor.run(comfy_loader(txt2img(), "current.safetensors"))
    executor.run(comfy_loader(txt2img(prompt="another"), "current.safetensors"))
    assert load_count == [link]
    link.unlink()
    os.symlink(other, link)
    assert executor.run(comfy_loader(txt2img(prompt="another"), "current.safetensors")).executed[0] == "ckpt"
    assert len(load_count) == 2


# --- the CLI, end to end --------------------------------------------------------------------------------------------


def nodegraph(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "nodegraph", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_cli_runs_checkpoints_from_a_symlink_a_symlinked_folder_and_a_yaml_folder(tmp_path, tiny_checkpoint):
    """One workflow, three CheckpointLoaderSimple -> ... -> SaveImage branches, one per way of placing a model."""
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    os.symlink(tiny_checkpoint, tmp_path / "models" / "checkpoints" / "linked.safetensors")
    os.symlink(tiny_checkpoint.parent, tmp_path / "models" / "checkpoints" / "shared")
    webui = tmp_path / "stable-diffusion-webui" / "models" / "Stable-diffusion"
    webui.mkdir(parents=True)
    os.link(tiny_checkpoint, webui / "from-a1111.safetensors")
    (tmp_path / "extra_model_paths.yaml").write_text(
        "a111:\n  base_path: stable-diffusion-webui\n  checkpoints: models/Stable-diffusion\n")
    flow = {"version": 1, "nodes": {}}
    for branch, name in (("a", "linked.safetensors"), ("b", f"shared/{tiny_checkpoint.name}"),
                         ("c", "from-a1111.safetensors")):
        part = comfy_loader(txt2img(prefix=f"branch_{branch}"), name)["nodes"]
        flow["nodes"].update({f"{branch}_{node_id}": relinked(spec, branch) for node_id, spec in part.items()})
    (tmp_path / "flow.json").write_text(json.dumps(flow))
    run = nodegraph("run", "flow.json", "--models", "models", "--extra-model-paths", "extra_model_paths.yaml",
                    "--output", "out", "--device", "cpu", "--quiet", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    written = all_files(tmp_path / "out")
    assert [path.name for path in written] == [f"branch_{b}_00001_.png" for b in "abc"]
    assert len({pixels(path) for path in written}) == 1  # the same file three ways: the same image


def relinked(spec: dict, branch: str) -> dict:
    spec = copy.deepcopy(spec)
    for key, value in spec["inputs"].items():
        if isinstance(value, list):
            spec["inputs"][key] = [f"{branch}_{value[0]}", value[1]]
    return spec


def test_a_malformed_yaml_stops_the_cli_with_exit_2_naming_file_and_key(tmp_path, capsys):
    bad = tmp_path / "extra_model_paths.yaml"
    bad.write_text("a111:\n  checkpoints: 12\n")
    (tmp_path / "flow.json").write_text(json.dumps(txt2img()))
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(tmp_path / "flow.json"), "--extra-model-paths", str(bad), "--output", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--extra-model-paths" in err and str(bad) in err and "a111.checkpoints" in err
    assert not (tmp_path / "out").exists()


def test_a_yaml_folder_that_does_not_exist_is_warned_about(tmp_path, capsys):
    path = tmp_path / "extra.yaml"
    path.write_text("a111:\n  base_path: typo\n  checkpoints: models/Stable-diffusion\n")
    assert main(["nodes", "--models", str(tmp_path / "models"), "--extra-model-paths", str(path)]) == 0
    assert "a111.checkpoints" in capsys.readouterr().err


# --- pickled checkpoints: only when allowed, never with code ----------------------------------------------------------


class RunsCode:
    """Unpickling this creates a file: what a malicious .ckpt would do (worse) with torch.load(weights_only=False)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_pickled_checkpoint_runs_only_when_allowed(env, tiny_checkpoint):
    torch.save({"state_dict": load_file(str(tiny_checkpoint))}, env.checkpoints_dir / "old.ckpt")
    assert "old.ckpt" not in choices(env)
    allowed = dataclasses.replace(env, allow_pickled_models=True)
    assert "old.ckpt" in choices(allowed)
    assert Executor(allowed).run(comfy_loader(txt2img(), "old.ckpt")).outputs["save"]["images"]


def test_a_pickle_that_would_run_code_is_refused_even_when_allowed(tmp_path, tiny_checkpoint):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": load_file(str(tiny_checkpoint)), "payload": RunsCode(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(tmp_path / "evil.ckpt", device="cpu", dtype=torch.float32, allow_pickle=True)
    assert not marker.exists()


# --- VAELoader and load_vae -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_sd(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)


def latent_and_image():
    generator = torch.Generator().manual_seed(5)
    return torch.randn(1, 4, 6, 8, generator=generator), torch.rand(1, 3, 48, 64, generator=generator) * 2 - 1


def assert_same_vae(loaded, checkpoint_sd):
    latent, image = latent_and_image()
    assert torch.equal(loaded.vae.decode(latent), checkpoint_sd.vae.decode(latent))
    assert torch.equal(loaded.vae.encode(image), checkpoint_sd.vae.encode(image))


def test_a_standalone_vae_file_loads_to_the_checkpoints_own_vae(tmp_path, tiny_checkpoint, checkpoint_sd):
    path = write_vae(tmp_path / "vae.safetensors", vae_part(load_file(str(tiny_checkpoint))))
    assert_same_vae(load_vae(path, device="cpu", dtype=torch.float32), checkpoint_sd)


def test_a_vae_in_diffusers_layout_loads_to_the_same_vae(tmp_path, tiny_checkpoint, tiny_config, checkpoint_sd):
    from reference import reference_models

    _, diffusers_vae, _ = reference_models(tiny_checkpoint, tiny_config)
    state = diffusers_vae.state_dict()
    assert "decoder.up_blocks.0.resnets.0.norm1.weight" in state and state[
        "encoder.mid_block.attentions.0.to_q.weight"].ndim == 2  # really diffusers' names and linear attention
    path = write_vae(tmp_path / "diffusion_pytorch_model.safetensors", state)
    assert_same_vae(load_vae(path, device="cpu", dtype=torch.float32), checkpoint_sd)


def test_a_vae_saved_with_its_checkpoint_prefix_or_training_tensors_loads(tmp_path, tiny_checkpoint, checkpoint_sd):
    state = load_file(str(tiny_checkpoint))
    prefixed = {key: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    training = {"loss.logvar": torch.zeros(()), "model_ema.decay": torch.tensor(0.999)}
    for name, tensors in (("prefixed", prefixed), ("training", vae_part(state) | training)):
        assert_same_vae(load_vae(write_vae(tmp_path / f"{name}.safetensors", tensors), device="cpu",
                                 dtype=torch.float32), checkpoint_sd)


def test_a_vae_file_with_a_missing_or_unknown_key_is_refused_naming_it(tmp_path, tiny_checkpoint):
    vae = vae_part(load_file(str(tiny_checkpoint)))
    missing = {key: value for key, value in vae.items() if key != "decoder.conv_out.bias"}
    with pytest.raises(CheckpointError, match=r"missing key.*decoder\.conv_out\.bias"):
        load_vae(write_vae(tmp_path / "missing.safetensors", missing), device="cpu")
    with pytest.raises(CheckpointError, match=r"unexpected key.*encoder\.extra\.weight"):
        load_vae(write_vae(tmp_path / "extra.safetensors", vae | {"encoder.extra.weight": torch.zeros(1)}),
                 device="cpu")


def test_a_file_that_is_no_vae_is_refused(tmp_path, tiny_checkpoint):
    unet = {key: value for key, value in load_file(str(tiny_checkpoint)).items()
            if key.startswith("model.diffusion_model.")}
    with pytest.raises(CheckpointError, match="not a VAE file"):
        load_vae(write_vae(tmp_path / "unet.safetensors", unet), device="cpu")


def test_vae_loader_decodes_as_the_checkpoints_vae_and_another_vae_changes_the_image(sd_env, tiny_checkpoint):
    vae_folder = sd_env.models_dir / "vae"
    write_vae(vae_folder / "same.safetensors", vae_part(load_file(str(tiny_checkpoint))))
    write_vae(vae_folder / "sub" / "other.safetensors", vae_part(build_state_dict(TinyConfig(), seed=1)))
    spec = builtin_registry().get_comfy("VAELoader").input_specs()["vae_name"]
    assert spec.allowed_choices(sd_env) == ["same.safetensors", "sub/other.safetensors"]
    executor = Executor(sd_env)
    executor.run(txt2img(seed=4, prefix="a"))
    executor.run(with_vae_loader(txt2img(seed=4, prefix="b"), "same.safetensors"))
    executor.run(with_vae_loader(txt2img(seed=4, prefix="c"), "sub/other.safetensors"))
    own, same, other = saved_pixels(sd_env)
    assert own == same and other != own


def test_a_replaced_vae_file_is_loaded_again(sd_env, tiny_checkpoint):
    path = write_vae(sd_env.models_dir / "vae" / "v.safetensors", vae_part(load_file(str(tiny_checkpoint))))
    executor = Executor(sd_env)
    executor.run(with_vae_loader(txt2img(prefix="a"), "v.safetensors"))
    write_vae(path, vae_part(build_state_dict(TinyConfig(), seed=1)))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    result = executor.run(with_vae_loader(txt2img(prefix="b"), "v.safetensors"))
    assert "vae" in result.executed
    first, second = saved_pixels(sd_env)
    assert first != second
