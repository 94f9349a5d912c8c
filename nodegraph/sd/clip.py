"""The CLIP ViT-L/14 text transformer in the HF layout (SD 1.x's text encoder, SDXL's first). Attribute names
follow the checkpoint's keys."""

from dataclasses import dataclass

import torch
from torch import nn

from .attention import multi_head_attention

HEAD_SIZE = 64  # CLIP text models use 64-channel heads; the width alone does not say how many heads


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 768
    layers: int = 12
    mlp_width: int = 3072

    @property
    def heads(self) -> int:
        return max(1, self.width // HEAD_SIZE)

    @classmethod
    def from_state_dict(cls, weights: dict) -> "TextEncoderConfig":
        vocab_size, width = weights["text_model.embeddings.token_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[3]) for k in weights if k.startswith("text_model.encoder.layers."))
        return cls(
            vocab_size=vocab_size,
            context_length=weights["text_model.embeddings.position_embedding.weight"].shape[0],
            width=width,
            layers=layers,
            mlp_width=weights["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        )


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = multi_head_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, causal=True)
        return self.out_proj(out)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.width)
        self.self_attn = SelfAttention(config.width, config.heads)
        self.layer_norm2 = nn.LayerNorm(config.width)
        self.mlp = MLP(config.width, config.mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        # Built on the meta device to be loaded, there is nothing to initialise; and torch's meta normal_ would
        # import ~800 modules, 74 MiB of resident memory in the middle of a load that is meant to be lean.
        if not self.weight.is_meta:
            super().reset_parameters()


class Embeddings(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.token_embedding = Embedding(config.vocab_size, config.width)
        self.position_embedding = Embedding(config.context_length, config.width)
        # Kept as a saved buffer because SD files carry it; its stored values are not trusted (see checkpoint.py).
        # Made on the CPU even while building on the meta device: torch's meta arange imports ~500 modules.
        self.register_buffer("position_ids", torch.arange(config.context_length, device="cpu").unsqueeze(0))


class TextModel(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width)


class TextEncoder(nn.Module):
    """ids [B,T] -> final-layer-norm hidden states [B,T,width]; `layer` -n takes hidden layer -n instead of the last
    (CLIP skip), with the final layer norm applied to it, as ComfyUI's CLIPSetLastLayer and A1111 do.
    openclip.OpenCLIPTextEncoder has the same interface."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.text_model = TextModel(config)

    def forward(self, ids: torch.Tensor, layer: int = -1) -> torch.Tensor:
        return self.from_embeddings(self.token_embeddings(ids), layer)[0]

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """The input vectors of token ids [B,T] -> [B,T,width], in the weights' dtype, before positions are added:
        where a textual-inversion embedding puts its own vectors."""
        embedding = self.text_model.embeddings.token_embedding
        return embedding(ids.to(embedding.weight.device))

    def from_embeddings(self, tokens: torch.Tensor, layer: int = -1,
                        layer_norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Input vectors [B,T,width] -> (hidden layer `layer`, final layer norm applied iff `layer_norm`; the last
        layer after the final layer norm). SDXL reads CLIP-L's layer -2 without the norm; SD 1.x's clip skip with it.

        The last layer is always computed: ComfyUI's pooled output comes from it whatever the CLIP skip."""
        model = self.text_model
        chosen = self.layer_index(layer)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = tokens + model.embeddings.position_embedding(positions)
        hidden = None
        for index, block in enumerate(model.encoder.layers):
            x = block(x)
            if index == chosen:
                hidden = x
        last = model.final_layer_norm(x)
        if not layer_norm:
            return hidden, last
        return (last if hidden is x else model.final_layer_norm(hidden)), last

    def layer_index(self, layer: int) -> int:
        """The index in encoder.layers of CLIP-skip layer `layer` (-1: the last; -n: n - 1 layers skipped)."""
        depth = len(self.text_model.encoder.layers)
        if not isinstance(layer, int) or not -depth <= layer <= -1:
            raise ValueError(f"clip layer {layer} does not exist: this text encoder has {depth} layers, so the last "
                             f"layer to stop at goes from -1 (the last) to -{depth}")
        return depth + layer

    def project_pooled(self, state: torch.Tensor) -> torch.Tensor:
        """A pooled state [B,width] unchanged: SD files carry no text_projection for CLIP-L (SDXL's pooled
        conditioning is the OpenCLIP encoder's), so there is nothing to apply."""
        return state
