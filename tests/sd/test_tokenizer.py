"""Our SD 1.x prompt layout against transformers' CLIPTokenizer, and the shipped vocab files against SD 1.x's."""

import hashlib

import pytest

from nodegraph.sd.tokenizer import BOS, EOS, VOCAB_DIR, Tokenizer
from reference import reference_tokenizer

PROMPTS = [
    "", " ", "a", "A photo of a cat", "a photo of a cat", "A PHOTO OF A CAT",
    "a red circle on a white background", "an astronaut riding a horse on mars, trending on artstation, 4k",
    "don't stop believin'", "it's the cat's toy; isn't it?", "rock'n'roll", "O'Brien's pub",
    "3.14159 and 2,718 and 1e-10", "1920x1080 8k uhd", "#hashtag @user $100 50% off!!!",
    "(masterpiece:1.2), [worst quality], {blue} <lora:x:0.5>", "tab\tseparated\nnew line   spaces",
    "café naïve résumé façade", "東京タワーの夜景", "Привет мир", "emoji 😀🎨🚀 party", "ﬁne ligatures and ＦＵＬＬＷＩＤＴＨ",
    "a" * 200, "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "hyphen-ated words and under_scores and slash/es", "quotes \"double\" and 'single'",
    "UPPER lower MiXeD CaSe", "new\u00a0break\u2009thin spaces", "ümlaut Ä Ö Ü ß",
    ", ".join(f"word{i}" for i in range(80)),  # longer than 77 tokens: truncated
    "a portrait of a woman, " * 12,
    "x" * 1000,
]


@pytest.fixture(scope="module")
def ours():
    return Tokenizer()


def test_vocab_files_are_byte_identical_to_sd1s():
    expected = {"vocab.json": "e089ad92ba36837a0d31433e555c8f45fe601ab5c221d4f607ded32d9f7a4349",
                "merges.txt": "9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a"}
    for name, digest in expected.items():
        assert hashlib.sha256((VOCAB_DIR / name).read_bytes()).hexdigest() == digest


def test_ids_equal_transformers_cliptokenizer_on_varied_prompts(ours):
    reference = reference_tokenizer()
    assert len(PROMPTS) >= 30
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    actual = ours(PROMPTS)
    for prompt, want, got in zip(PROMPTS, expected, actual.tolist()):
        assert got == want, f"ids differ for {prompt!r}"


def test_layout_is_bos_tokens_eos_then_eos_padding(ours):
    ids = ours(["a photo of a cat"])
    assert ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert set(ids[0, 7:].tolist()) == {EOS}


def test_long_prompts_keep_75_tokens_and_end_with_eos(ours):
    ids = ours([", ".join(f"word{i}" for i in range(80))])[0].tolist()
    assert ids[0] == BOS and ids[-1] == EOS and EOS not in ids[1:76]


def test_a_single_string_is_a_batch_of_one(ours):
    assert ours("a cat").shape == (1, 77)
