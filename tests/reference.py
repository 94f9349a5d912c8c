"""The reference the parity tests compare against: diffusers and transformers models built from one of our tiny
checkpoint files through diffusers' own single-file conversion functions (bench/reference.py), offline."""

from pathlib import Path

from safetensors.torch import load_file

from bench.reference import diffusers_models, reference_tokenizer  # noqa: F401 (re-exported for the tests)
from checkpoints import TinyConfig, ldm_original_config


def reference_models(path: Path, config: TinyConfig):
    text = config.text
    return diffusers_models(load_file(str(path)), ldm_original_config(config), {
        "vocab_size": text.vocab_size, "hidden_size": text.width, "intermediate_size": text.mlp_width,
        "num_hidden_layers": text.layers, "num_attention_heads": text.heads,
        "max_position_embeddings": text.context_length})
