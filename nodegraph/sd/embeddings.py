"""Textual-inversion embeddings read from their files: the vectors [n, width] that `embedding:name` in a prompt
stands for, one token slot each.

The forms in the wild, all read here (ComfyUI's load_embed reads the same ones):
- A1111's {"string_to_param": {"*": [n, W]}, "name", "step", ...}: a .pt pickle; in a .safetensors file the key is
  flattened to "string_to_param.*";
- {"emb_params": [n, W]}: A1111's and kohya's .safetensors;
- {"clip_l": [n, 768], "clip_g": [n, 1280]}: an SDXL embedding (each encoder takes its own; the clip_l vectors
  also fit an SD 1.x encoder);
- a file of one tensor, bare or under any key (diffusers' learned_embeds {"<token>": [W]}).
Pickled files (.pt, .bin, ...) are read only when allowed, with torch.load(weights_only=True).
"""

from pathlib import Path

import torch

from .tensorfile import read_pickle_weights_only, read_safetensors_whole

PICKLE_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth")
# The keys that hold the vectors in a file of several tensors, in the order they are looked for.
VECTOR_KEYS = ("string_to_param.*", "emb_params", "clip_l")


class EmbeddingError(ValueError):
    def __init__(self, path, problem: str):
        super().__init__(f"embedding file {path}: {problem}")
        self.path = str(path)
        self.problem = problem


def read_embedding(path: str | Path, width: int | None = None, allow_pickle: bool = False,
                   encoder: str | None = None) -> torch.Tensor:
    """The vectors of an embedding file, float32 [n, W] on the CPU. `width`: the text encoder's, checked here so a
    file of another model family is refused by name rather than failing deep in the encoder. `encoder`: the text
    encoder's name ("clip_l", "clip_g"): an SDXL file's vectors for it are taken (ComfyUI's embedding_key)."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(path, "no such file")
    tensors = _read_pickle(path, allow_pickle) if path.suffix.lower() in PICKLE_SUFFIXES else _read_safetensors(path)
    vectors = tensors[encoder] if encoder is not None and isinstance(tensors.get(encoder), torch.Tensor) else \
        _pick_vectors(path, tensors)
    if not vectors.is_floating_point() or vectors.ndim == 0 or vectors.numel() == 0:
        raise EmbeddingError(path, f"holds no vectors: a {vectors.dtype} tensor of shape {tuple(vectors.shape)}")
    vectors = vectors.reshape(-1, vectors.shape[-1]).float()
    if width is not None and vectors.shape[1] != width:
        raise EmbeddingError(path, f"its vectors are {vectors.shape[1]} wide, but this text encoder's are {width}: "
                                   "the embedding was trained for another model family")
    if not torch.isfinite(vectors).all():
        raise EmbeddingError(path, "its vectors hold NaN or infinite values")
    return vectors


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors_whole(path, EmbeddingError)


def _read_pickle(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    data = read_pickle_weights_only(path, allow_pickle, EmbeddingError)
    if isinstance(data, torch.Tensor):
        return {"": data}
    if not isinstance(data, dict):
        raise EmbeddingError(path, f"holds a {type(data).__name__}, not an embedding's tensors")
    tensors = {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}
    nested = data.get("string_to_param")
    if isinstance(nested, dict) and nested:  # A1111: one entry, "*"
        tensors["string_to_param.*"] = next(iter(nested.values()))
    return tensors


def _pick_vectors(path: Path, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    for key in VECTOR_KEYS:
        if isinstance(tensors.get(key), torch.Tensor):
            return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    keys = ", ".join(sorted(tensors)[:10]) or "none"
    raise EmbeddingError(path, f"no embedding vectors found: expected one tensor, or one of {', '.join(VECTOR_KEYS)}; "
                               f"it has {len(tensors)} tensors ({keys})")
