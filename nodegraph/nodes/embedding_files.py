"""Embeddings by the name a prompt gives them (`embedding:name`), from the embeddings folders (nodegraph.model_folders).

A name is found as ComfyUI's load_embed finds it: as written ("style.safetensors", "sub/style.pt"), else with
.safetensors, .pt or .bin added, else the same in any subfolder ("style" finds "sub/style.safetensors"). Pickled
files are read only with Environment.allow_pickled_models; one found without it is refused by name, not ignored.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from nodegraph.model_folders import describe_roots, list_models, model_path
from nodegraph.nodes import Environment
from nodegraph.paths import UnsafePath, check_relative_name, file_fingerprint
from nodegraph.sd import prompt
from nodegraph.sd.embeddings import EmbeddingError, read_embedding

SUFFIXES_TRIED = (".safetensors", ".pt", ".bin")  # what ComfyUI adds to a name given without its suffix, in order


def embedding_file(env: Environment, name: str) -> Path | None:
    """The file `embedding:name` reads, or None when there is none (a name leaving its folder has none either).
    Raises EmbeddingError for a pickled file while pickles are not allowed."""
    path = _find(env, name)
    if path is None and not env.allow_pickled_models:
        pickled = _find(dataclasses.replace(env, allow_pickled_models=True), name)
        if pickled is not None:
            raise EmbeddingError(pickled, "is a Python pickle, which can run code when loaded: convert it to "
                                          ".safetensors, or allow pickled models (--allow-pickled-models)")
    return path


def _find(env: Environment, name: str) -> Path | None:
    try:
        check_relative_name(name)
    except UnsafePath:
        return None
    candidates = [name] + [name + suffix for suffix in SUFFIXES_TRIED]
    for candidate in candidates:
        try:
            return model_path(env, "embeddings", candidate)
        except (FileNotFoundError, UnsafePath):
            continue
    in_subfolders = [listed for listed in list_models(env, "embeddings")
                     if any(listed.endswith("/" + candidate) for candidate in candidates)]
    return model_path(env, "embeddings", in_subfolders[0]) if in_subfolders else None


def embedding_lookup(env: Environment) -> Callable[..., torch.Tensor | None]:
    """`embedding(name, encoder=) -> vectors [n, W] | None` over the env's embeddings folders, for nodegraph.sd.prompt
    (`encoder`: the text encoder's name, which picks an SDXL file's clip_l or clip_g vectors; the prompt checks
    their width). A file that is there but unreadable raises EmbeddingError naming it."""

    def embedding(name: str, encoder: str | None = None) -> torch.Tensor | None:
        path = embedding_file(env, name)
        return None if path is None else read_embedding(path, allow_pickle=env.allow_pickled_models, encoder=encoder)

    return embedding


def missing_embedding_warning(env: Environment, warn: Callable[[str], None]) -> Callable[[str], None]:
    """`warn` with where embeddings were looked for added to each message."""
    return lambda message: warn(f"{message} (embeddings folders: {describe_roots(env, 'embeddings')})")


def embeddings_fingerprint(env: Environment, text) -> dict | None:
    """The files a prompt's embeddings come from, for a text encoder's cache signature: a replaced, added or removed
    embedding file encodes the prompt again."""
    if not isinstance(text, str):
        return None
    files = {}
    for name in prompt.embedding_names(text):
        try:
            path = embedding_file(env, name)
        except EmbeddingError as error:  # reported when the node runs
            path = Path(error.path)
        files[name] = file_fingerprint(path) if path is not None else None
    return files or None
