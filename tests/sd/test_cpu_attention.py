"""Our bf16 CPU attention kernel: the same results as PyTorch's attention, used where it applies, PyTorch's elsewhere."""

import os

import pytest
import torch
import torch.nn.functional as F

from nodegraph.sd import cpu_attention
from nodegraph.sd.attention import multi_head_attention



@pytest.fixture
def kernel():
    """Skips where the kernel is not meant to run (AMX, or no AVX512-BF16); fails under CI where it should run and
    does not (no compiler, a compile error), so CI never skips it silently."""
    if cpu_attention.kernel() is None:
        flags = cpu_attention.cpu_flags()
        if "avx512_bf16" in flags and "amx_bf16" not in flags and os.environ.get("CI"):
            pytest.fail("this CPU should run the attention kernel, but it did not build or load (see the log)")
        pytest.skip("the attention kernel does not run on this CPU (AMX, or no AVX512-BF16) or did not build")


def reference(q, k, v, heads):
    """fp32 attention of the same bf16 inputs."""
    batch, _, channels = q.shape
    split = [t.float().reshape(batch, -1, heads, channels // heads).transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(batch, -1, channels)


def torch_bf16(q, k, v, heads):
    batch, _, channels = q.shape
    split = [t.reshape(batch, -1, heads, channels // heads).transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(batch, -1, channels).float()


@pytest.mark.parametrize("batch,queries,keys,heads,head_size", [
    (2, 1024, 1024, 8, 40),   # SD 1.x self-attention (at 256x256)
    (2, 1024, 77, 8, 40),     # cross-attention on a prompt: 77 keys, not a multiple of the 64-key block
    (1, 256, 256, 8, 80),
    (2, 256, 256, 8, 160),
    (1, 1031, 130, 3, 24),    # queries not a multiple of the 4-query tile, head size not of 16
    (3, 90, 1000, 2, 8),
])
def test_kernel_matches_pytorch_attention(kernel, batch, queries, keys, heads, head_size):
    torch.manual_seed(0)
    q = torch.randn(batch, queries, heads * head_size).bfloat16()
    k, v = (torch.randn(batch, keys, heads * head_size).bfloat16() for _ in range(2))
    ours = cpu_attention.attention(q, k, v, heads)
    assert ours is not None and ours.dtype == torch.bfloat16 and ours.shape == q.shape
    exact = reference(q, k, v, heads)
    # no further from fp32 attention than PyTorch's own bf16 kernel, up to one bf16 rounding step
    assert (ours.float() - exact).abs().max() <= (torch_bf16(q, k, v, heads) - exact).abs().max() + 2**-8


def test_strided_projections_need_no_copies(kernel):
    """q/k/v as slices of one fused projection (token stride 3C) give the same result as contiguous ones."""
    torch.manual_seed(1)
    qkv = torch.randn(2, 300, 3 * 320).bfloat16()
    q, k, v = qkv.split(320, dim=-1)
    assert torch.equal(cpu_attention.attention(q, k, v, 8), cpu_attention.attention(*(t.contiguous() for t in (q, k, v)), 8))


def test_pytorch_runs_what_the_kernel_does_not_handle():
    q = torch.randn(1, 600, 64).bfloat16()
    assert cpu_attention.attention(q.float(), q.float(), q.float(), 1) is None        # fp32
    assert cpu_attention.attention(q[:, :4], q[:, :4], q[:, :4], 1) is None            # too small to pay for threads
    wide = torch.randn(1, 600, 512).bfloat16()
    assert cpu_attention.attention(wide, wide, wide, 1) is None                         # a 512-wide head (the VAE's)
    grad = q.float().requires_grad_()
    assert cpu_attention.attention(grad.bfloat16(), q, q, 1) is None                    # training
    out = multi_head_attention(wide, wide, wide, heads=1)                               # falls back, same contract
    assert out.shape == wide.shape


def test_the_kernel_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("NODEGRAPH_CPU_ATTENTION", "0")
    cpu_attention.kernel.cache_clear()
    try:
        q = torch.randn(2, 1024, 320).bfloat16()
        assert cpu_attention.attention(q, q, q, 8) is None
    finally:
        cpu_attention.kernel.cache_clear()
