"""The SD prompt layout over CLIP's byte-level BPE: BOS, at most 75 tokens, EOS, padding to 77 (EOS for CLIP-L;
OpenCLIP's encoders of SD 2.x and SDXL pad with 0)."""

from pathlib import Path

import torch
from transformers import CLIPTokenizer

VOCAB_DIR = Path(__file__).parent / "vocab"
BOS, EOS = 49406, 49407
CONTEXT_LENGTH = 77


class Tokenizer:
    def __init__(self, vocab_dir: Path = VOCAB_DIR, context_length: int = CONTEXT_LENGTH):
        # transformers only splits text into BPE ids here; the SD layout (BOS/EOS/padding/truncation) is ours.
        self.bpe = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"))
        self.context_length = context_length

    def tokens(self, text: str) -> list[int]:
        """The BPE ids of one prompt, without BOS/EOS and untruncated."""
        return self.bpe(text, add_special_tokens=False).input_ids

    def __call__(self, texts: list[str], pad_token: int = EOS) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        body = self.context_length - 2
        rows = []
        for text in texts:
            ids = [BOS] + self.tokens(text)[:body] + [EOS]
            rows.append(ids + [pad_token] * (self.context_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)
