"""Reading .safetensors straight into the model's dtype: exact values, clear errors, no second copy in memory."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodegraph.sd.tensorfile import FormatError, SafetensorsReader


@pytest.fixture
def mixed_file(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(300, 70, generator=generator), "f16": torch.randn(5, 3000, generator=generator).half(),
               "bf16": torch.randn(2, 2, 9, generator=generator).bfloat16(), "i64": torch.arange(77).unsqueeze(0),
               "empty": torch.zeros(0, 4)}
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float16, torch.bfloat16])
def test_values_equal_a_plain_load_then_cast(mixed_file, dtype, monkeypatch):
    monkeypatch.setattr("nodegraph.sd.tensorfile.CHUNK_BYTES", 4096)  # many chunks per tensor
    expected = load_file(str(mixed_file))
    reader = SafetensorsReader(mixed_file)
    for key, tensor in expected.items():
        want = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        got = reader.read(key, dtype)
        assert got.dtype == want.dtype and torch.equal(got, want), key
        assert reader.meta(key).shape == tensor.shape


def test_truncated_file_is_named_as_truncated(mixed_file):
    data = mixed_file.read_bytes()
    mixed_file.write_bytes(data[:-100])
    with pytest.raises(FormatError, match="truncated"):
        SafetensorsReader(mixed_file)


@pytest.mark.parametrize("content", [b"", b"\x05\x00\x00\x00\x00\x00\x00\x00{oops", b"\xff" * 64,
                                     b"\x02\x00\x00\x00\x00\x00\x00\x00[]"])
def test_garbage_is_not_a_safetensors_file(tmp_path, content):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(FormatError):
        SafetensorsReader(path)


def test_converting_a_large_tensor_holds_no_second_copy(tmp_path):
    """Peak resident memory grows by the converted tensor and one chunk, not by the file as well."""
    path = tmp_path / "big.safetensors"
    save_file({"weight": torch.ones(64 * 2**20, dtype=torch.float16)}, str(path))  # 128 MiB
    code = f"""
import resource, torch
from nodegraph.sd.tensorfile import SafetensorsReader
reader = SafetensorsReader({str(path)!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
weight = reader.read("weight", torch.bfloat16)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert weight.float().sum().item() == 64 * 2**20
print((after - before) * 1024)
"""
    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown < 128 * 2**20 + 24 * 2**20, f"peak grew by {grown / 2**20:.0f} MiB for a 128 MiB tensor"


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_conv_weights_can_be_read_channels_last(tmp_path, dtype, monkeypatch):
    monkeypatch.setattr("nodegraph.sd.tensorfile.CHUNK_BYTES", 1000)  # several rows per chunk, and chunk edges
    weight = torch.randn(7, 5, 3, 3).half()
    save_file({"conv": weight, "bias": torch.randn(7).half()}, str(tmp_path / "conv.safetensors"))
    reader = SafetensorsReader(tmp_path / "conv.safetensors")
    got = reader.read("conv", dtype, torch.channels_last)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, weight.to(dtype or torch.float16))
    assert torch.equal(reader.read("bias", dtype, torch.channels_last), load_file(str(tmp_path / "conv.safetensors"))["bias"].to(dtype or torch.float16))
