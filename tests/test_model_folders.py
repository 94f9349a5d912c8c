"""Model folders as ComfyUI users have them: its folder kinds, symlinks followed, extra_model_paths.yaml, and names
that stay confined."""

import os
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import save_file
import torch

from nodegraph.extra_model_paths import ExtraModelFolder, ModelPathsError, read_extra_model_paths
from nodegraph.model_folders import (FOLDER_KINDS, PACKAGED_MODELS, UnknownModelFolder, embedding_names, list_models,
                                     model_kinds, model_path, model_roots, safetensors_metadata)
from nodegraph.nodes import Environment
from nodegraph.paths import UnsafePath

DEMO = "demo-shapes.safetensors"
DEMO_LORA, DEMO_EMBEDDING = "demo-ring.safetensors", "demo-sunset"  # also packaged, offered beside the user's


def touch(path: Path, content: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def models(tmp_path) -> Path:
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def env_with(models: Path, *yaml_files: Path, **settings) -> Environment:
    extra = tuple(folder for path in yaml_files for folder in read_extra_model_paths(path))
    return Environment(models_dir=models, extra_model_paths=extra, **settings)


# --- kinds and their folders ----------------------------------------------------------------------------------------


def test_comfyui_folder_kinds_are_known():
    for kind in ("checkpoints", "loras", "vae", "embeddings", "upscale_models", "controlnet", "clip", "unet",
                 "diffusion_models", "text_encoders", "clip_vision", "style_models", "hypernetworks", "gligen",
                 "vae_approx", "photomaker"):
        assert kind in FOLDER_KINDS


def test_each_kind_reads_its_folder_under_models(models):
    env = Environment(models_dir=models)
    assert model_roots(env, "checkpoints") == [models / "checkpoints"]
    assert model_roots(env, "loras") == [models / "loras"]
    assert model_roots(env, "controlnet") == [models / "controlnet", models / "t2i_adapter"]


def test_unet_and_diffusion_models_share_folders_as_do_clip_and_text_encoders(models):
    env = Environment(models_dir=models)
    assert model_roots(env, "unet") == model_roots(env, "diffusion_models") == [models / "unet",
                                                                              models / "diffusion_models"]
    assert model_roots(env, "clip") == model_roots(env, "text_encoders") == [models / "text_encoders",
                                                                           models / "clip"]
    touch(models / "unet" / "a.safetensors")
    touch(models / "diffusion_models" / "b.safetensors")
    assert list_models(env, "unet") == list_models(env, "diffusion_models") == ["a.safetensors", "b.safetensors"]


def test_an_unknown_kind_is_refused_by_name(models):
    with pytest.raises(UnknownModelFolder, match="'checkpoint'"):
        list_models(Environment(models_dir=models), "checkpoint")


def test_models_lists_comfyui_kinds_without_the_legacy_aliases(models):
    kinds = model_kinds(Environment(models_dir=models))
    assert kinds[:3] == ["checkpoints", "loras", "vae"] and "unet" not in kinds and "clip" not in kinds


# --- what is offered ------------------------------------------------------------------------------------------------


def test_safetensors_in_subfolders_are_offered_sorted_but_not_pickles_or_hidden_files(models):
    for name in ("b.safetensors", "sd15/a.safetensors", "c.sft", "old.ckpt", "x.pt", "x.bin", ".hidden.safetensors",
                 ".cache/d.safetensors", "notes.txt"):
        touch(models / "loras" / name)
    assert list_models(Environment(models_dir=models), "loras") == ["b.safetensors", "c.sft", DEMO_LORA,
                                                                 "sd15/a.safetensors"]


def test_pickled_models_are_offered_only_when_allowed(models):
    touch(models / "loras" / "old.ckpt")
    touch(models / "loras" / "new.safetensors")
    assert list_models(Environment(models_dir=models), "loras") == [DEMO_LORA, "new.safetensors"]
    with pytest.raises(FileNotFoundError, match="not offered"):
        model_path(Environment(models_dir=models), "loras", "old.ckpt")
    allowed = Environment(models_dir=models, allow_pickled_models=True)
    assert list_models(allowed, "loras") == [DEMO_LORA, "new.safetensors", "old.ckpt"]
    assert model_path(allowed, "loras", "old.ckpt") == models / "loras" / "old.ckpt"


def test_a_symlinked_model_file_is_offered_and_found(models, tmp_path):
    shared = touch(tmp_path / "shared" / "model.safetensors", b"weights")
    (models / "checkpoints").mkdir()
    os.symlink(shared, models / "checkpoints" / "linked.safetensors")
    env = Environment(models_dir=models)
    assert "linked.safetensors" in list_models(env, "checkpoints")
    assert model_path(env, "checkpoints", "linked.safetensors").read_bytes() == b"weights"


def test_a_symlinked_models_subfolder_is_walked(models, tmp_path):
    touch(tmp_path / "a1111" / "Stable-diffusion" / "sub" / "v15.safetensors", b"v15")
    (models / "checkpoints").mkdir()
    os.symlink(tmp_path / "a1111" / "Stable-diffusion", models / "checkpoints" / "a1111")
    env = Environment(models_dir=models)
    assert "a1111/sub/v15.safetensors" in list_models(env, "checkpoints")
    assert model_path(env, "checkpoints", "a1111/sub/v15.safetensors").read_bytes() == b"v15"


def test_a_symlinked_kind_folder_is_walked(models, tmp_path):
    touch(tmp_path / "elsewhere" / "one.safetensors")
    os.symlink(tmp_path / "elsewhere", models / "vae")
    assert list_models(Environment(models_dir=models), "vae") == ["one.safetensors"]


def test_broken_links_and_link_loops_are_skipped(models, tmp_path):
    folder = models / "loras"
    touch(folder / "real.safetensors")
    os.symlink(tmp_path / "missing.safetensors", folder / "broken.safetensors")
    os.symlink(folder, folder / "loop")  # a link to its own folder: walked once, not forever
    assert list_models(Environment(models_dir=models), "loras") == [DEMO_LORA, "real.safetensors"]


def test_the_packaged_demo_checkpoint_is_offered_and_a_users_file_of_that_name_wins(models):
    env = Environment(models_dir=models)
    assert DEMO in list_models(env, "checkpoints")
    assert model_path(env, "checkpoints", DEMO) == PACKAGED_MODELS["checkpoints"][DEMO]
    own = touch(models / "checkpoints" / DEMO, b"mine")
    assert list_models(env, "checkpoints").count(DEMO) == 1
    assert model_path(env, "checkpoints", DEMO) == own


def test_the_first_root_holding_a_name_wins(models, tmp_path):
    touch(models / "text_encoders" / "t5.safetensors", b"first")
    touch(models / "clip" / "t5.safetensors", b"second")
    assert model_path(Environment(models_dir=models), "clip", "t5.safetensors").read_bytes() == b"first"


# --- names stay confined --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../secret.safetensors", "sub/../../secret.safetensors", "/etc/passwd",
                                  "a\0.safetensors", "..\\secret.safetensors", "C:/secret.safetensors", "", ".",
                                  "sub/.."])
def test_names_that_could_leave_the_folder_are_refused(models, name):
    touch(models / "secret.safetensors")
    touch(models / "checkpoints" / "sub" / "ok.safetensors")
    with pytest.raises(UnsafePath):
        model_path(Environment(models_dir=models), "checkpoints", name)


def test_a_missing_model_names_the_folders_searched(models):
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        model_path(Environment(models_dir=models), "checkpoints", "absent.safetensors")


# --- extra_model_paths.yaml -----------------------------------------------------------------------------------------

A1111_YAML = """\
    a111:
        base_path: ../stable-diffusion-webui/

        checkpoints: models/Stable-diffusion
        configs: models/Stable-diffusion
        vae: models/VAE
        loras: |
             models/Lora
             models/LyCORIS
        upscale_models: |
                      models/ESRGAN
                      models/RealESRGAN
        embeddings: embeddings
        hypernetworks: models/hypernetworks
        controlnet: models/ControlNet
    """


def test_an_a1111_tree_is_read_through_its_own_folder_names(models, tmp_path):
    webui = tmp_path / "stable-diffusion-webui"
    touch(webui / "models" / "Stable-diffusion" / "v1-5.safetensors")
    touch(webui / "models" / "Lora" / "style.safetensors")
    touch(webui / "models" / "LyCORIS" / "loha.safetensors")
    touch(webui / "models" / "VAE" / "vae-ft-mse.safetensors")
    touch(webui / "embeddings" / "easynegative.safetensors")
    env = env_with(models, write_yaml(tmp_path / "config" / "extra_model_paths.yaml", A1111_YAML))
    assert model_roots(env, "loras") == [models / "loras", webui / "models" / "Lora", webui / "models" / "LyCORIS"]
    assert list_models(env, "checkpoints") == [DEMO, "v1-5.safetensors"]
    assert list_models(env, "loras") == [DEMO_LORA, "loha.safetensors", "style.safetensors"]
    assert list_models(env, "vae") == ["vae-ft-mse.safetensors"]
    assert embedding_names(env) == [DEMO_EMBEDDING, "easynegative"]
    assert model_path(env, "checkpoints", "v1-5.safetensors") == webui / "models/Stable-diffusion/v1-5.safetensors"


def test_folders_without_base_path_are_relative_to_the_yaml_files_folder(models, tmp_path):
    touch(tmp_path / "config" / "mine" / "a.safetensors")
    path = write_yaml(tmp_path / "config" / "extra.yaml", """\
        comfyui:
            checkpoints: mine
        """)
    assert model_roots(env_with(models, path), "checkpoints") == [models / "checkpoints", tmp_path / "config" / "mine"]


def test_legacy_kind_names_in_the_yaml_add_to_the_shared_kind(models, tmp_path):
    path = write_yaml(tmp_path / "extra.yaml", f"""\
        comfyui:
            base_path: {tmp_path / "comfy"}
            clip: models/clip
            unet: models/unet
        """)
    env = env_with(models, path)
    assert model_roots(env, "text_encoders")[-1] == tmp_path / "comfy" / "models" / "clip"
    assert model_roots(env, "diffusion_models")[-1] == tmp_path / "comfy" / "models" / "unet"


def test_is_default_folders_come_first_in_comfyuis_order(models, tmp_path):
    path = write_yaml(tmp_path / "extra.yaml", f"""\
        network:
            base_path: {tmp_path / "network"}
            is_default: true
            checkpoints: |
                first
                second
        """)
    assert model_roots(env_with(models, path), "checkpoints") == [
        tmp_path / "network" / "second", tmp_path / "network" / "first", models / "checkpoints"]


def test_a_folder_named_twice_is_searched_once(models, tmp_path):
    path = write_yaml(tmp_path / "extra.yaml", f"""\
        again:
            checkpoints: |
                {models / "checkpoints"}
                {tmp_path / "other"}
                {tmp_path / "other"}/
        """)
    assert model_roots(env_with(models, path), "checkpoints") == [models / "checkpoints", tmp_path / "other"]


def test_several_files_add_up_in_order_and_a_list_also_names_several_folders(models, tmp_path):
    first = write_yaml(tmp_path / "one.yaml", "one:\n  vae: [a, b]\n")
    second = write_yaml(tmp_path / "two.yaml", "two:\n  vae: c\n")
    assert model_roots(env_with(models, first, second), "vae") == [models / "vae"] + [tmp_path / n for n in "abc"]


def test_kinds_only_the_yaml_names_are_folders_too_but_configs_and_custom_nodes_are_not(models, tmp_path):
    touch(tmp_path / "sams" / "sam_vit_b.safetensors")
    path = write_yaml(tmp_path / "extra.yaml", f"""\
        comfyui:
            base_path: {tmp_path}
            sams: sams
            configs: configs
            custom_nodes: custom_nodes
        """)
    env = env_with(models, path)
    assert model_kinds(env)[-1] == "sams" and "configs" not in model_kinds(env)
    assert list_models(env, "sams") == ["sam_vit_b.safetensors"]
    with pytest.raises(UnknownModelFolder):
        list_models(env, "custom_nodes")


def test_an_empty_or_all_commented_yaml_adds_nothing(tmp_path):
    assert read_extra_model_paths(write_yaml(tmp_path / "empty.yaml", "# a111:\n#   checkpoints: x\n")) == ()
    assert read_extra_model_paths(write_yaml(tmp_path / "section.yaml", "a111:\n")) == ()


def test_the_environment_with_extra_folders_stays_hashable(models, tmp_path):
    env = env_with(models, write_yaml(tmp_path / "extra.yaml", "x:\n  vae: a\n"))
    assert hash(env) == hash(Environment(models_dir=models, extra_model_paths=(
        ExtraModelFolder("vae", tmp_path / "a", False, f"{tmp_path / 'extra.yaml'}: x.vae"),)))


@pytest.mark.parametrize("text, where, expected", [
    ("a111:\n  checkpoints: [unclosed\n", "", "not valid YAML"),
    ("- checkpoints\n", "", "expected sections"),
    ("a111: models\n", "section 'a111'", "expected folder kinds mapped to folders"),
    ("a111:\n  checkpoints: 12\n", "a111.checkpoints", "expected a folder"),
    ("a111:\n  loras:\n    style: x\n", "a111.loras", "expected a folder"),
    ("a111:\n  is_default: yes please\n  vae: x\n", "a111.is_default", "expected true or false"),
    ("a111:\n  base_path: [a, b]\n  vae: x\n", "a111.base_path", "expected a folder"),
])
def test_a_malformed_yaml_is_refused_naming_the_file_and_key(tmp_path, text, where, expected):
    path = write_yaml(tmp_path / "extra_model_paths.yaml", text)
    with pytest.raises(ModelPathsError) as error:
        read_extra_model_paths(path)
    assert str(path) in str(error.value) and where in str(error.value) and expected in str(error.value)


def test_a_missing_yaml_file_is_refused_by_name(tmp_path):
    with pytest.raises(ModelPathsError, match="absent.yaml"):
        read_extra_model_paths(tmp_path / "absent.yaml")


# --- what the server's model routes answer --------------------------------------------------------------------------


def test_metadata_of_a_safetensors_model(models):
    (models / "loras").mkdir()
    save_file({"w": torch.zeros(2)}, str(models / "loras" / "tagged.safetensors"), metadata={"ss_network_dim": "16"})
    save_file({"w": torch.zeros(2)}, str(models / "loras" / "plain.safetensors"))
    env = Environment(models_dir=models)
    assert safetensors_metadata(env, "loras", "tagged.safetensors") == {"ss_network_dim": "16"}
    assert safetensors_metadata(env, "loras", "plain.safetensors") is None
    with pytest.raises(UnsafePath):
        safetensors_metadata(env, "loras", "../tagged.safetensors")
    with pytest.raises(FileNotFoundError):
        safetensors_metadata(env, "loras", "absent.safetensors")
