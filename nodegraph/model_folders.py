"""Model folders as ComfyUI lays them out: <models>/checkpoints, loras, vae, embeddings, ... plus the folders an
extra_model_paths.yaml adds (see extra_model_paths.py).

Each kind of model has roots, searched in order (`model_roots`): ComfyUI's default folders under the models folder
(two for some kinds: diffusion_models reads models/unet and models/diffusion_models), then the yaml's folders
(`is_default` ones first). A model is named by its path relative to its root ("sd15/model.safetensors"); the first
root holding a name wins. Model folders are the operator's: symlinked files and folders in them are followed. Names
given by users are still checked (no `..`, absolute path, NUL or backslash), so only such a link leads elsewhere.

Only safetensors files are offered: pickled .ckpt/.pt/.bin/.pth files can run code when unpickled. With
`Environment.allow_pickled_models` they are offered too, and read with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from nodegraph.paths import UnsafePath, list_files, path_under

if TYPE_CHECKING:
    from nodegraph.nodes import Environment

# ComfyUI's model kinds (folder_paths.py) and their folders under the models folder, in ComfyUI's order.
DEFAULT_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "latent_upscale_models": ("latent_upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "model_patches": ("model_patches",),
    "audio_encoders": ("audio_encoders",),
}
# The older names ComfyUI still takes for two kinds (in nodes' folder lookups and in extra_model_paths.yaml).
LEGACY_KINDS = {"unet": "diffusion_models", "clip": "text_encoders"}
FOLDER_KINDS: tuple[str, ...] = tuple(DEFAULT_FOLDERS) + tuple(LEGACY_KINDS)
# extra_model_paths.yaml keys that are not folders of model files: read, never offered as models.
NOT_MODEL_FOLDERS = frozenset({"configs", "custom_nodes", "download_model_base", "diffusers", "classifiers"})

SAFE_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")  # ComfyUI's others; .pkl and .pt2 are never read here

# Models that ship with the package, by kind and name: offered beside the user's files (which win on a name clash).
# The demo checkpoint (tools/train_demo.py), and a LoRA and an embedding trained on it (tools/train_demo_lora.py,
# tools/train_demo_embedding.py), each in the package folder of its kind.
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_MODELS: dict[str, dict[str, Path]] = {
    kind: {name: PACKAGE_DIR / kind / name for name in names}
    for kind, names in {"checkpoints": ["demo-shapes.safetensors"], "loras": ["demo-ring.safetensors"],
                        "embeddings": ["demo-sunset.safetensors"]}.items()
}
METADATA_MAX_HEADER_BYTES = 16 * 2**20  # /view_metadata reads no bigger header than this


class UnknownModelFolder(LookupError):
    """A folder kind that is neither ComfyUI's nor named in an extra_model_paths file."""


def canonical_kind(env: Environment, kind: str) -> str:
    """ComfyUI's current name for a kind ("unet" -> "diffusion_models"); raises UnknownModelFolder."""
    kind = LEGACY_KINDS.get(kind, kind)
    if kind in DEFAULT_FOLDERS or kind in _extra_kinds(env):
        return kind
    raise UnknownModelFolder(f"{kind!r} is not a model folder; known: {', '.join(model_kinds(env))}")


def model_kinds(env: Environment) -> list[str]:
    """The model folder kinds, as ComfyUI's GET /models lists them: its own, then any more an extra_model_paths
    file names (custom nodes' kinds)."""
    return list(DEFAULT_FOLDERS) + [kind for kind in _extra_kinds(env) if kind not in DEFAULT_FOLDERS]


def _extra_kinds(env: Environment) -> dict[str, None]:
    kinds = (LEGACY_KINDS.get(folder.kind, folder.kind) for folder in env.extra_model_paths)
    return dict.fromkeys(kind for kind in kinds if kind not in NOT_MODEL_FOLDERS)


def model_roots(env: Environment, kind: str) -> list[Path]:
    """The folders searched for `kind`, in order: models/<kind> (and ComfyUI's second folder for some kinds), then
    the extra_model_paths folders; those marked is_default go first, as ComfyUI puts them."""
    kind = canonical_kind(env, kind)
    roots = [Path(env.models_dir) / folder for folder in DEFAULT_FOLDERS.get(kind, ())]
    for folder in env.extra_model_paths:
        if LEGACY_KINDS.get(folder.kind, folder.kind) != kind:
            continue
        same = [root for root in roots if os.path.abspath(root) == os.path.abspath(folder.path)]
        if same and folder.is_default:
            roots.remove(same[0])
        elif same:
            continue
        if folder.is_default:
            roots.insert(0, folder.path)
        else:
            roots.append(folder.path)
    return roots


def model_suffixes(env: Environment) -> tuple[str, ...]:
    return SAFE_SUFFIXES + (PICKLE_SUFFIXES if env.allow_pickled_models else ())


def list_models(env: Environment, kind: str) -> list[str]:
    """The names of the `kind` models offered: relative '/'-names in all roots (symlinks followed), sorted."""
    names = set()
    for root in model_roots(env, kind):
        names.update(list_files(root, model_suffixes(env), follow_links=True))
    names.update(name for name, path in PACKAGED_MODELS.get(canonical_kind(env, kind), {}).items() if path.is_file())
    return sorted(names)


def model_path(env: Environment, kind: str, name: str) -> Path:
    """The file of the `kind` model `name`, from the first root holding it.

    Raises UnsafePath for a name that could leave its folder (`..`, absolute, NUL, backslash), FileNotFoundError
    when no root has it (or it is not a file this kind offers), UnknownModelFolder for an unknown kind."""
    relative = path_under(Path(), name)  # the name's checks, before any disk access
    if any(part.startswith(".") for part in relative.parts) or relative.suffix.lower() not in model_suffixes(env):
        raise FileNotFoundError(f"{name!r} is not offered as a {kind} model: only {', '.join(model_suffixes(env))} "
                                "files that are not hidden are")
    for root in model_roots(env, kind):
        path = path_under(root, name)
        if path.is_file():
            return path
    packaged = PACKAGED_MODELS.get(canonical_kind(env, kind), {}).get(name)
    if packaged is not None and packaged.is_file():
        return packaged
    raise FileNotFoundError(f"no {kind} model {name!r} in {describe_roots(env, kind)}")


def describe_roots(env: Environment, kind: str) -> str:
    """The roots of `kind` for messages: "models/checkpoints, /data/a1111/models/Stable-diffusion"."""
    return ", ".join(str(root) for root in model_roots(env, kind))


def embedding_names(env: Environment) -> list[str]:
    """What ComfyUI's GET /embeddings lists: the embeddings' names without their suffix."""
    return [str(PurePosixPath(name).with_suffix("")) for name in list_models(env, "embeddings")]


def safetensors_metadata(env: Environment, kind: str, name: str) -> dict | None:
    """The `__metadata__` of a .safetensors model (what ComfyUI's GET /view_metadata/{folder} answers), or None
    when the file has none or is not a readable .safetensors file. Raises as `model_path` does."""
    if not name.endswith(".safetensors"):  # as ComfyUI: .sft and pickles have no metadata to show
        raise FileNotFoundError(f"{name!r} is not a .safetensors file")
    path = model_path(env, kind, name)
    try:
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little")
            if not 0 < length <= METADATA_MAX_HEADER_BYTES:
                return None
            header = json.loads(file.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


__all__ = ["FOLDER_KINDS", "UnknownModelFolder", "UnsafePath", "canonical_kind", "describe_roots", "embedding_names",
           "list_models", "model_kinds", "model_path", "model_roots", "model_suffixes", "safetensors_metadata"]
