"""transformers' CLIPTokenizer over our vocab files, as diffusers' pipeline uses it."""

from transformers import CLIPTokenizer

from nodegraph.sd.tokenizer import VOCAB_DIR


def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer(str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt"), model_max_length=77)
