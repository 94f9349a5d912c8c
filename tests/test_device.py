"""The device and dtype policy, decided in one place."""

import torch

from nodegraph import device as policy


def test_none_picks_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert policy.pick_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert policy.pick_device(None) == torch.device("cuda")
    assert policy.pick_device("cpu") == torch.device("cpu")


def test_dtype_none_picks_fp16_on_cuda():
    assert policy.pick_dtype(torch.device("cuda")) == torch.float16


def test_dtype_none_picks_bf16_on_cpus_with_native_bf16_matrices(monkeypatch):
    monkeypatch.setattr(policy, "cpu_has_fast_bf16", lambda: True)
    assert policy.pick_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(policy, "cpu_has_fast_bf16", lambda: False)
    assert policy.pick_dtype(torch.device("cpu")) == torch.float32


def test_explicit_dtypes_by_object_and_by_name():
    assert policy.pick_dtype(torch.device("cpu"), torch.float16) == torch.float16
    assert policy.pick_dtype(torch.device("cpu"), "fp32") == torch.float32
    assert policy.pick_dtype(torch.device("cuda"), "bf16") == torch.bfloat16


def test_the_vae_never_runs_in_fp16(monkeypatch):
    # ComfyUI's VAE working dtypes are bf16 and fp32: an fp16 model gets a bf16 VAE where the GPU has bf16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16_gpu, vae_dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16_gpu=bf16_gpu: bf16_gpu)
        assert policy.pick_vae_dtype(torch.device("cuda"), torch.float16) == vae_dtype
    assert policy.pick_vae_dtype(torch.device("cpu"), torch.float16) == torch.float32
    assert policy.pick_vae_dtype(torch.device("cpu"), torch.bfloat16) == torch.bfloat16
