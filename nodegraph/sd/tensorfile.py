"""Reading .safetensors files tensor by tensor, straight into the dtype the model wants.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte range) and the raw
bytes. We read it with plain file reads rather than the safetensors library's memory map: a mapped file's pages
count as our resident memory once touched, so loading an fp16 file into bf16 through the map peaks at twice the
weights. Here each tensor is read in chunks into its final, converted storage: the peak is the weights plus one chunk.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
CHUNK_BYTES = 8 * 2**20
MAX_HEADER_BYTES = 100 * 2**20


class FormatError(ValueError):
    """The file is not a well-formed .safetensors file (or is cut short)."""


class SafetensorsReader:
    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                raise FormatError(f"{size} bytes is too short for a .safetensors header")
            header_length = int.from_bytes(prefix, "little")
            if header_length > min(MAX_HEADER_BYTES, size - 8):
                raise FormatError(f"header length {header_length} does not fit a {size}-byte file (truncated, or not .safetensors)")
            try:
                header = json.loads(file.read(header_length))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise FormatError(f"header is not JSON: {error}") from error
        if not isinstance(header, dict):
            raise FormatError("header is not a JSON object")
        header.pop("__metadata__", None)
        self.data_start = 8 + header_length
        data_size = size - self.data_start
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            try:
                dtype, shape, (begin, end) = DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError) as error:
                raise FormatError(f"tensor {key!r} has a malformed header entry: {info!r}") from error
            expected = torch.Size(shape).numel() * dtype.itemsize
            if end - begin != expected or begin < 0:
                raise FormatError(f"tensor {key!r} claims {end - begin} bytes, its shape {shape} needs {expected}")
            if end > data_size:
                raise FormatError(f"tensor {key!r} ends at byte {end} of the data, but the file holds only {data_size}: "
                                  "the file is truncated")
            self.entries[key] = (dtype, shape, begin, end)
        # One conversion buffer for the whole file: a fresh one per tensor would leave the allocator holding a
        # chunk-sized hole per size class, tens of MB in all.
        self._chunk = bytearray(CHUNK_BYTES)

    def meta(self, key: str) -> torch.Tensor:
        """A meta tensor with the stored shape and dtype: for inferring architectures without reading data."""
        dtype, shape, _, _ = self.entries[key]
        return torch.empty(shape, dtype=dtype, device="meta")

    def read(self, key: str, dtype: torch.dtype | None = None,
             memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """The tensor on the CPU, converted to `dtype` (floating-point tensors only) and laid out in `memory_format`
        while it is read, a chunk of whole rows (first-dimension slices) at a time."""
        stored, shape, begin, end = self.entries[key]
        target = dtype if dtype is not None and stored.is_floating_point else stored
        if len(shape) != 4:
            memory_format = torch.contiguous_format
        out = torch.empty(shape, dtype=target, memory_format=memory_format)
        if out.numel() == 0:
            return out
        with open(self.path, "rb") as file:
            file.seek(self.data_start + begin)
            if target == stored and out.is_contiguous():  # read straight into the tensor's own memory
                if file.readinto(memoryview(out.view(-1).view(torch.uint8).numpy())) != end - begin:
                    raise FormatError(f"tensor {key!r} is cut short")
                return out
            rows = out.view(1, -1) if out.ndim == 0 else out
            row_elements = rows[0].numel()
            rows_per_chunk = max(1, len(self._chunk) // (row_elements * stored.itemsize))
            chunk = self._chunk if rows_per_chunk * row_elements * stored.itemsize <= len(self._chunk) else \
                bytearray(row_elements * stored.itemsize)  # a single row bigger than the shared buffer
            for first in range(0, rows.shape[0], rows_per_chunk):
                count = min(rows_per_chunk, rows.shape[0] - first)
                size = count * row_elements * stored.itemsize
                if file.readinto(memoryview(chunk)[:size]) != size:
                    raise FormatError(f"tensor {key!r} is cut short")
                values = torch.frombuffer(chunk, dtype=stored, count=count * row_elements)
                rows[first:first + count].copy_(values.view((count,) + tuple(rows.shape[1:])))
            return out


def read_safetensors_whole(path: Path, fail: Callable[[Path, str], Exception]) -> dict[str, torch.Tensor]:
    """Every tensor of a small .safetensors file (a LoRA, an embedding), as stored; `fail(path, problem)` makes the
    caller's own error for a file that cannot be read."""
    try:
        reader = SafetensorsReader(path)
        return {key: reader.read(key) for key in reader.entries}
    except (FormatError, OSError) as error:
        raise fail(path, f"not a readable .safetensors file: {error}") from error


def read_pickle_weights_only(path: Path, allow_pickle: bool, fail: Callable[[Path, str], Exception]) -> Any:
    """What a pickled torch file holds, read with torch's weights_only loader, and only when the user allowed
    pickles: unpickling a file can run code."""
    if not allow_pickle:
        raise fail(path, f"'{path.suffix}' files are Python pickles, which can run code when loaded; convert it to "
                         ".safetensors, or allow pickled models (--allow-pickled-models, weights_only loading)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a corrupt or hostile pickle
        raise fail(path, f"cannot read as a weights-only torch file: {error}") from error
