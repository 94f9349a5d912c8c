"""ComfyUI's extra_model_paths.yaml: more folders to find models in, so an existing ComfyUI or A1111 tree is used
in place.

The file has sections (any names; ComfyUI's example calls them `comfyui` and `a111`), each mapping folder kinds to
folders:

    a111:
        base_path: /opt/stable-diffusion-webui    # relative: to the yaml file's folder
        checkpoints: models/Stable-diffusion
        vae: models/VAE
        loras: |                                   # several folders: one per line
            models/Lora
            models/LyCORIS
        embeddings: embeddings

Folders are relative to base_path, or without one to the yaml file's folder. `is_default: true` puts a section's
folders before ours (ComfyUI inserts each at the front, so several end up in reverse order). Keys that are not model
folders (configs, custom_nodes, download_model_base) are read and not used. Only `yaml.safe_load` reads the file.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

SECTION_SETTINGS = ("base_path", "is_default")


class ModelPathsError(ValueError):
    """An extra_model_paths file that cannot be read as ComfyUI's format; the message names the file and the key."""


@dataclass(frozen=True)
class ExtraModelFolder:
    """One folder an extra_model_paths file adds to a kind of model (as the file spells the kind: "clip", "unet")."""

    kind: str
    path: Path  # absolute, normalized, not resolved: symlinks in it are the operator's and stay
    is_default: bool = False  # listed before our models/<kind>
    source: str = ""  # "FILE: section.key", for messages


def read_extra_model_paths(path: str | Path) -> tuple[ExtraModelFolder, ...]:
    """The folders a ComfyUI extra_model_paths.yaml names, in the file's order; raises ModelPathsError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelPathsError(f"{path}: cannot read it: {error}") from error
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ModelPathsError(f"{path}: not valid YAML: {error}") from error
    if config is None:  # empty, or everything commented out
        return ()
    if not isinstance(config, dict):
        raise ModelPathsError(f"{path}: expected sections (such as comfyui: or a111:) mapping folder kinds to "
                              f"folders, got {_kind_of(config)}")
    yaml_folder = Path(os.path.abspath(path)).parent
    folders = []
    for section, settings in config.items():
        if settings is None:  # a section with everything commented out
            continue
        if not isinstance(settings, dict):
            raise ModelPathsError(f"{path}: section {section!r}: expected folder kinds mapped to folders "
                                  f"(checkpoints: models/checkpoints, ...), got {_kind_of(settings)}")
        folders += _section_folders(path, yaml_folder, str(section), settings)
    return tuple(folders)


def _section_folders(path: Path, yaml_folder: Path, section: str, settings: dict) -> list[ExtraModelFolder]:
    base = settings.get("base_path")
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise ModelPathsError(f"{path}: {section}.base_path: expected a folder, got {_kind_of(base)}")
        base = yaml_folder / _expand(base)
    is_default = settings.get("is_default", False)
    if not isinstance(is_default, bool):
        raise ModelPathsError(f"{path}: {section}.is_default: expected true or false, got {_kind_of(is_default)}")
    folders = []
    for kind, value in settings.items():
        if kind in SECTION_SETTINGS:
            continue
        where = f"{path}: {section}.{kind}"
        if not isinstance(kind, str):
            raise ModelPathsError(f"{path}: section {section!r}: folder kinds are names (checkpoints, loras, ...), "
                                  f"got {kind!r}")
        for entry in _entries(where, value):
            # An absolute entry stays absolute under base_path too (os.path.join semantics, as ComfyUI does).
            folder = (base or yaml_folder) / _expand(entry)
            folders.append(ExtraModelFolder(kind, Path(os.path.normpath(folder)), is_default, where))
    return folders


def _entries(where: str, value) -> list[str]:
    """The folders of one key: a string with one folder per line (YAML's `|` block), or a list of strings."""
    if isinstance(value, str):
        lines = value.splitlines()
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        lines = value
    else:
        raise ModelPathsError(f"{where}: expected a folder, or several one per line, got {_kind_of(value)}")
    return [line.strip() for line in lines if line.strip()]


def _expand(folder: str) -> str:
    return os.path.expandvars(os.path.expanduser(folder))


def _kind_of(value) -> str:
    names = {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", int: "a number", float: "a number"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r:.60})"


def missing_folders(folders: tuple[ExtraModelFolder, ...]) -> list[str]:
    """Warnings for folders that do not exist (often a typo in base_path); they are kept, and used once they exist."""
    return [f"{folder.source}: {folder.path} does not exist" for folder in folders if not folder.path.is_dir()]
