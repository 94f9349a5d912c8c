"""On the CPU, convolution (and bf16 linear) weights are packed once at load: the same outputs as plain weights, at any
input size."""

import copy

import pytest
import torch

from nodegraph.sd import load_checkpoint
from nodegraph.sd.layers import Conv2d, Linear, can_pack, pack_weights

pytestmark = pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.float32), reason="PyTorch built without oneDNN")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (3, 2, 0), (1, 1, 0)])
def test_packed_convolutions_equal_plain_ones_at_any_size(dtype, kernel, stride, padding):
    torch.manual_seed(0)
    plain = Conv2d(16, 24, kernel, stride=stride, padding=padding).to(dtype)
    packed = copy.deepcopy(plain)
    pack_weights(packed)
    assert packed.weight.is_mkldnn == (kernel > 1)  # 1x1 convolutions stay plain
    for size in [(3, 3), (4, 4), (5, 7), (64, 64)]:
        x = torch.randn(2, 16, *size).to(dtype)
        with torch.no_grad():
            assert torch.equal(packed(x), plain(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linears_equal_plain_ones_for_any_batch(dtype):
    torch.manual_seed(0)
    plain = Linear(48, 80).to(dtype)
    packed = copy.deepcopy(plain)
    pack_weights(packed)
    assert packed.weight.is_mkldnn == (dtype == torch.bfloat16)  # fp32 linears stay plain
    for shape in [(1, 48), (3, 48), (2, 77, 48), (2, 4096, 48)]:
        x = torch.randn(shape).to(dtype)
        with torch.no_grad():
            assert torch.equal(packed(x), plain(x))


def test_cpu_checkpoints_load_packed_unless_asked_not_to(tiny_checkpoint):
    sd = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)
    plain = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32, pack_weights=False)
    assert sd.unet.input_blocks[0][0].weight.is_mkldnn and sd.vae.decoder.conv_out.weight.is_mkldnn
    assert load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.bfloat16).unet.time_embed[0].weight.is_mkldnn
    assert not any(t.is_mkldnn for t in plain.unet.state_dict().values())
    assert sd.unet.state_dict().keys() == plain.unet.state_dict().keys()
    torch.manual_seed(0)
    x, context = torch.randn(1, 4, 6, 8), torch.randn(1, 7, sd.unet.config.context_dim)
    with torch.no_grad():
        packed_eps, plain_eps = sd.unet(x, 10, context), plain.unet(x, 10, context)
    # the same arithmetic, bar the order oneDNN sums in for a differently laid-out first input
    assert (packed_eps - plain_eps).abs().max() <= 1e-5 * plain_eps.abs().max()
