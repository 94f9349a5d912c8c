"""The OpenCLIP text transformer in its own layout: SD 2.x's ViT-H (cond_stage_model.model.*) and SDXL's ViT-bigG
(conditioner.embedders.1.model.* in the base, conditioner.embedders.0.model.* in the refiner).

Attribute names are the file's keys under that prefix, so one strict `load_state_dict` loads a part as it is stored:
the fused q/k/v projection stays fused (as nn.MultiheadAttention stores it) and text_projection stays [width, proj].
The interface is clip.py's TextEncoder's, so prompt encoding, LoRA and embeddings treat both layouts alike.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import multi_head_attention
from .clip import HEAD_SIZE, Embedding


@dataclass(frozen=True)
class OpenCLIPTextConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1024
    layers: int = 24
    mlp_width: int = 4096
    projection_dim: int | None = 1024  # text_projection's output width; None where the file carries none
    logit_scale: bool = True  # the file carries CLIP's (unused) contrastive temperature

    @property
    def heads(self) -> int:
        return max(1, self.width // HEAD_SIZE)

    @classmethod
    def from_state_dict(cls, weights: dict) -> "OpenCLIPTextConfig":
        """Infer the config from the part's tensors (keys without the part prefix; meta tensors will do)."""
        vocab_size, width = weights["token_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("transformer.resblocks."))
        projection = weights.get("text_projection")
        return cls(
            vocab_size=vocab_size,
            context_length=weights["positional_embedding"].shape[0],
            width=width,
            layers=layers,
            mlp_width=weights["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            projection_dim=None if projection is None else projection.shape[1],
            logit_scale="logit_scale" in weights,
        )


class Attention(nn.Module):
    """Causal self-attention with nn.MultiheadAttention's parameter names (in_proj_weight holds q, k, v stacked),
    computed by our shared attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        # torch.empty: built on the meta device to be loaded, there is nothing to initialise
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # views, no copies
        return self.out_proj(multi_head_attention(q, k, v, self.heads, causal=True))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact GELU (OpenCLIP's), not CLIP-L's quick GELU


class ResidualAttentionBlock(nn.Module):
    def __init__(self, config: OpenCLIPTextConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width)
        self.attn = Attention(config.width, config.heads)
        self.ln_2 = nn.LayerNorm(config.width)
        self.mlp = MLP(config.width, config.mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, config: OpenCLIPTextConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(config) for _ in range(config.layers))


class OpenCLIPTextEncoder(nn.Module):
    """ids [B,T] -> final-layer-norm hidden states [B,T,width]; `layer` -n reads hidden layer -n instead (CLIP
    skip). Same interface as clip.TextEncoder."""

    def __init__(self, config: OpenCLIPTextConfig):
        super().__init__()
        self.config = config
        self.token_embedding = Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(config)
        self.ln_final = nn.LayerNorm(config.width)
        if config.projection_dim is not None:
            self.text_projection = nn.Parameter(torch.empty(config.width, config.projection_dim))
        if config.logit_scale:
            # Only so a strict load accepts real files (text encoding never uses it); a buffer, so it counts in no
            # parameter total and no optimiser sees it.
            self.register_buffer("logit_scale", torch.empty(()))

    def forward(self, ids: torch.Tensor, layer: int = -1) -> torch.Tensor:
        return self.from_embeddings(self.token_embeddings(ids), layer)[0]

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B,T] -> input vectors [B,T,width] in the weights' dtype, before positions are added: where a
        textual-inversion embedding puts its own vectors."""
        return self.token_embedding(ids.to(self.token_embedding.weight.device))

    def from_embeddings(self, tokens: torch.Tensor, layer: int = -1,
                        layer_norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Input vectors [B,T,width] -> (hidden layer `layer`, final layer norm applied iff `layer_norm`; the last
        layer after the final layer norm). The last layer is always computed: pooled outputs come from it."""
        chosen = self.layer_index(layer)
        x = tokens + self.positional_embedding[:tokens.shape[1]]
        hidden = None
        for index, block in enumerate(self.transformer.resblocks):
            x = block(x)
            if index == chosen:
                hidden = x
        last = self.ln_final(x)
        if not layer_norm:
            return hidden, last
        return (last if hidden is x else self.ln_final(hidden)), last

    def layer_index(self, layer: int) -> int:
        """The index in transformer.resblocks of CLIP-skip layer `layer` (-1: the last; -n: n - 1 layers skipped)."""
        depth = len(self.transformer.resblocks)
        if not isinstance(layer, int) or not -depth <= layer <= -1:
            raise ValueError(f"clip layer {layer} does not exist: this text encoder has {depth} layers, so the last "
                             f"layer to stop at goes from -1 (the last) to -{depth}")
        return depth + layer

    def project_pooled(self, state: torch.Tensor) -> torch.Tensor:
        """A pooled state [B,width] (the final-normed last layer at the EOS token) -> [B,proj] through
        text_projection (SDXL's pooled conditioning); unchanged where the file has no projection."""
        projection = getattr(self, "text_projection", None)
        if projection is None:
            return state
        return (state.to(projection) @ projection).to(state)  # in the weights' dtype, back on the caller's terms
