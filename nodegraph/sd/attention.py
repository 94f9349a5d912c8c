"""Multi-head attention over token sequences, shared by the text encoder, the UNet and the VAE."""

import torch
import torch.nn.functional as F

from . import cpu_attention


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool = False) -> torch.Tensor:
    """q [B,N,C], k/v [B,M,C] -> [B,N,C]; C is split into `heads` heads of C/heads channels."""
    if not causal and (out := cpu_attention.attention(q, k, v, heads)) is not None:
        return out
    batch, _, channels = q.shape
    head_size = channels // heads
    q, k, v = (t.reshape(batch, -1, heads, head_size).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return out.transpose(1, 2).reshape(batch, -1, channels)
