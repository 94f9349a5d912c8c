"""Reading a LoRA file: every tensor it holds, as stored, with errors that name the file and what is wrong with it.

A LoRA is small (megabytes to a few hundred), so it is read whole, in the dtype it was saved in; adapters convert
their factors to float32 only while computing a patched weight. .safetensors files are read with our own reader
(tensorfile.py: a truncated file or a header that does not fit the file is refused before any tensor is read);
pickled files (.pt, .ckpt, .bin, .pth) only when the caller allows them, and then with torch's weights_only loader.
"""

from pathlib import Path

import torch

from ..tensorfile import read_pickle_weights_only, read_safetensors_whole

SAFETENSORS_SUFFIXES = {".safetensors", ".sft"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}


class LoraError(ValueError):
    """A LoRA file that cannot be used: unreadable, or not made for this model. The message names the file."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def read_lora_file(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a LoRA file by key, on the CPU, as stored."""
    path = Path(path)
    if not path.is_file():
        raise LoraError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        tensors = _read_pickle(path, allow_pickle)
    elif suffix in SAFETENSORS_SUFFIXES:
        tensors = _read_safetensors(path)
    else:
        raise LoraError(path, f"'{suffix}' is not a LoRA file type: expected .safetensors (or, with the pickle opt-in, "
                              f"{', '.join(sorted(PICKLE_SUFFIXES))})")
    if not tensors:
        raise LoraError(path, "the file holds no tensors")
    return tensors


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors_whole(path, LoraError)


def _read_pickle(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    data = read_pickle_weights_only(path, allow_pickle, LoraError)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise LoraError(path, f"holds a {type(data).__name__}, not a dictionary of tensors")
    not_tensors = [str(key) for key, value in data.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise LoraError(path, f"{len(not_tensors)} entries are not tensors: {', '.join(not_tensors[:5])}")
    return {str(key): value for key, value in data.items()}
