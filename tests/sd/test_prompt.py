r"""ComfyUI's prompt syntax, token by token: weights ((x), (x:1.2), nesting, \( \), [x]), embeddings in prompts,
chunks of long prompts, and what the encoder makes of them (the empty-prompt weighting formula, the pooled output,
clip skip) against transformers' CLIP on the tiny checkpoint.

The expected layouts are written out here from ComfyUI's rules (comfy/sd1_clip.py: token_weights, tokenize_with_weights,
encode_token_weights), not computed by our code.
"""

import dataclasses

import re

import pytest
import torch

from checkpoints import randomize
from nodegraph.sd import conditioning as cond
from nodegraph.sd import prompt
from nodegraph.sd.clip import TextEncoder, TextEncoderConfig
from nodegraph.sd.tokenizer import BOS, EOS, Tokenizer
from reference import reference_models

CAT, RED, CIRCLE, A, COMMA = 2368, 736, 7117, 320, 267  # single-token words of CLIP's vocabulary


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def padded(*positions, length=77):
    """A chunk's (token, weight) pairs: BOS, the positions given, EOS, EOS padding."""
    body = [p if isinstance(p, tuple) else (p, 1.0) for p in positions]
    return [(BOS, 1.0)] + body + [(EOS, 1.0)] * (length - 1 - len(body))


# --- weights ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [  # ComfyUI's own documented examples (sd1_clip.token_weights)
    ("(foo)", [("foo", 1.1)]),
    ("(foo)(bar)", [("foo", 1.1), ("bar", 1.1)]),
    ("(foo:2.0)", [("foo", 2.0)]),
    ("((foo))", [("foo", 1.1 * 1.1)]),
    ("((foo):1.1)", [("foo", 1.1 * 1.1)]),
    ("((foo:1.1))", [("foo", 1.1)]),
    ("(foo:0.0)", [("foo", 0.0)]),
    ("((foo:1.0):0.0)", [("foo", 1.0)]),
    ("foo ((((lol (cat:666) attack:100)))) baz",
     [("foo ", 1.0), ("lol ", 100.0), ("cat", 666.0), (" attack", 100.0), (" baz", 1.0)]),
    ("foo ((((lol (cat:666) attack):100))) baz",
     [("foo ", 1.0), ("lol ", 110.0), ("cat", 666.0), (" attack", 110.0), (" baz", 1.0)]),
])
def test_weights_nest_as_comfyui_documents(text, expected):
    got = [(piece.text, piece.weight) for piece in prompt.pieces(text)]
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_the_weight_of_a_group_is_read_from_its_last_colon():
    assert [(p.text, p.weight) for p in prompt.pieces("(a:b:1.5) (a:b)")] == [("a:b", 1.5), (" ", 1.0),
                                                                            ("a:b", 1.1)]
    assert [(p.text, p.weight) for p in prompt.pieces("(:1.5)")] == [(":1.5", 1.1)]  # a colon first is text


def test_escaped_parentheses_are_literal_and_brackets_are_plain_text():
    assert [(p.text, p.weight) for p in prompt.pieces(r"\(a\) [b] (c)")] == [("(a) [b] ", 1.0), ("c", 1.1)]
    assert [(p.text, p.weight) for p in prompt.pieces(r"(\(a\):1.4)")] == [("(a)", 1.4)]


def test_unbalanced_parentheses_are_text_as_comfyui_splits_them():
    assert [(p.text, p.weight) for p in prompt.pieces("(a b")] == [("(a b", 1.0)]
    # a stray ")" leaves the nesting below zero, so the "(b)" after it is never a group of its own
    assert [(p.text, p.weight) for p in prompt.pieces("a) (b)")] == [("a) (b)", 1.0)]


def test_each_token_carries_its_pieces_weight(tokenizer):
    (chunk,) = prompt.tokenize(tokenizer, "a (red:1.3) ((circle)) cat")
    assert chunk == padded(A, (RED, 1.3), (CIRCLE, pytest.approx(1.21)), CAT)


# --- long prompts -------------------------------------------------------------------------------------------------


def test_a_prompt_of_75_tokens_is_one_chunk_and_76_are_two(tokenizer):
    assert prompt.tokenize(tokenizer, " ".join(["cat"] * 75)) == [padded(*[CAT] * 75)]
    two = prompt.tokenize(tokenizer, " ".join(["cat"] * 76))
    assert two == [padded(*[CAT] * 75), padded(CAT)]
    assert all(len(chunk) == 77 and chunk[-1] == (EOS, 1.0) for chunk in two)


def test_a_group_of_8_or_more_tokens_is_cut_at_the_chunk_boundary(tokenizer):
    text = " ".join(["cat"] * 70) + " (" + " ".join(["red"] * 8) + ":1.2)"
    assert prompt.tokenize(tokenizer, text) == [padded(*[CAT] * 70, *[(RED, 1.2)] * 5), padded(*[(RED, 1.2)] * 3)]


def test_a_shorter_group_that_does_not_fit_starts_the_next_chunk(tokenizer):
    text = " ".join(["cat"] * 70) + " (" + " ".join(["red"] * 7) + ":1.2) circle"
    assert prompt.tokenize(tokenizer, text) == [padded(*[CAT] * 70), padded(*[(RED, 1.2)] * 7, CIRCLE)]


def test_an_unweighted_long_prompt_is_one_group_cut_every_75_tokens(tokenizer):
    chunks = prompt.tokenize(tokenizer, " ".join(["cat"] * 160))
    assert chunks == [padded(*[CAT] * 75), padded(*[CAT] * 75), padded(*[CAT] * 10)]


def test_the_empty_prompt_is_bos_then_eos_padding(tokenizer):
    assert prompt.tokenize(tokenizer, "") == [padded()]


# --- embeddings in the text ---------------------------------------------------------------------------------------


def vectors(count: int, width: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def lookup_of(table: dict, asked: list | None = None):
    def embedding(name):
        if asked is not None:
            asked.append(name)
        return table.get(name)
    return embedding


def test_an_embedding_takes_one_slot_per_vector_with_the_weight_around_it(tokenizer):
    style = vectors(3)
    (chunk,) = prompt.tokenize(tokenizer, "a (embedding:style:1.2) cat", lookup_of({"style": style}))
    assert [t for t, _ in chunk[:2]] == [BOS, A]
    assert all(torch.equal(chunk[2 + i][0], style[i]) for i in range(3))
    assert [w for _, w in chunk[:6]] == [1.0, 1.0, 1.2, 1.2, 1.2, 1.0]
    assert chunk[5:] == [(CAT, 1.0)] + [(EOS, 1.0)] * 71


def test_an_embedding_is_a_group_of_its_own_when_chunking(tokenizer):
    table = {"small": vectors(4), "big": vectors(10)}
    text = " ".join(["cat"] * 73)
    first, second = prompt.tokenize(tokenizer, text + " embedding:small", lookup_of(table))
    assert first == padded(*[CAT] * 73) and all(torch.equal(second[1 + i][0], table["small"][i]) for i in range(4))
    first, second = prompt.tokenize(tokenizer, text + " embedding:big", lookup_of(table))
    assert all(torch.equal(first[74 + i][0], table["big"][i]) for i in range(2)) and first[76] == (EOS, 1.0)
    assert all(torch.equal(second[1 + i][0], table["big"][2 + i]) for i in range(8)) and second[9] == (EOS, 1.0)


def test_an_embedding_name_ends_at_whitespace_and_trailing_commas_are_text(tokenizer):
    style, asked = vectors(1), []
    (chunk,) = prompt.tokenize(tokenizer, "embedding:style, red", lookup_of({"style": style}, asked))
    assert asked == ["style,", "style"]  # as written first, then without its commas
    assert torch.equal(chunk[1][0], style[0]) and chunk[2:4] == [(COMMA, 1.0), (RED, 1.0)]
    (chunk,) = prompt.tokenize(tokenizer, "embedding:style[cat]", lookup_of({"style": style}))
    assert torch.equal(chunk[1][0], style[0]) and [t for t, _ in chunk[2:5]] == tokenizer.tokens("[cat]")


def test_embedding_with_its_file_suffix_is_looked_up_as_written(tokenizer):
    asked = []
    prompt.tokenize(tokenizer, "embedding:style.safetensors", lookup_of({}, asked), warn=lambda message: None)
    assert asked == ["style.safetensors"]


def test_embedding_inside_a_word_is_plain_text(tokenizer):
    asked = []
    (chunk,) = prompt.tokenize(tokenizer, "a,embedding:style", lookup_of({}, asked))
    assert asked == [] and [t for t, _ in chunk[1:7]] == tokenizer.tokens("a,embedding:style")


def test_a_missing_embedding_is_left_out_with_a_warning(tokenizer):
    warnings = []
    chunks = prompt.tokenize(tokenizer, "embedding:nowhere red cat", lookup_of({}), warn=warnings.append)
    assert chunks == [padded(RED, CAT)]
    assert len(warnings) == 1 and "embedding:nowhere" in warnings[0] and "left out" in warnings[0]


def test_an_embedding_of_another_width_is_left_out_with_a_warning(tokenizer):
    # ComfyUI's "shape mismatch when trying to apply embedding, embedding will be ignored"
    warnings = []
    chunks = prompt.tokenize(tokenizer, "embedding:wide red cat", lookup_of({"wide": vectors(2, 256)}), width=128,
                             warn=warnings.append)
    assert chunks == [padded(RED, CAT)]
    assert len(warnings) == 1 and re.search(r"embedding:wide has 256-wide vectors.*takes 128.*left out", warnings[0])


def test_embedding_names_lists_what_a_prompt_looks_up():
    assert prompt.embedding_names("embedding:a, b (embedding:sub/c:1.2) x,embedding:d embedding:e[f]") == \
        ["a,", "a", "sub/c", "e"]


# --- encoding -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_clip(tiny_checkpoint, tiny_config):
    """transformers' CLIPTextModel on the tiny checkpoint's text encoder (diffusers' own conversion)."""
    return reference_models(tiny_checkpoint, tiny_config)[2]


def ids_of(chunk) -> torch.Tensor:
    return torch.tensor([[token for token, _ in chunk]])


def test_an_unweighted_prompt_is_the_plain_encoding_and_the_pooled_state_at_its_first_eos(sd, reference_clip,
                                                                                           tokenizer):
    (encoded,) = cond.encode_text(sd, "a red circle")
    ids = ids_of(padded(A, RED, CIRCLE))
    with torch.no_grad():
        expected = reference_clip(ids).last_hidden_state
    torch.testing.assert_close(encoded.context, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoded.pooled, expected[:, 4], rtol=1e-5, atol=1e-5)


def test_weighted_tokens_move_away_from_the_empty_prompt_at_their_position(sd, reference_clip):
    (encoded,) = cond.encode_text(sd, "a (red:1.5) [circle]")
    chunk = padded(A, RED, *Tokenizer().tokens("[circle]"))
    with torch.no_grad():
        plain = reference_clip(ids_of(chunk)).last_hidden_state
        empty = reference_clip(ids_of(padded())).last_hidden_state
    expected = plain.clone()
    expected[:, 2] = empty[:, 2] + (plain[:, 2] - empty[:, 2]) * 1.5  # only the weighted position moves
    torch.testing.assert_close(encoded.context, expected, rtol=1e-5, atol=1e-5)
    first_eos = 3 + len(Tokenizer().tokens("[circle]"))
    assert chunk[first_eos] == (EOS, 1.0) and chunk[first_eos - 1] != (EOS, 1.0)
    torch.testing.assert_close(encoded.pooled, plain[:, first_eos], rtol=1e-5, atol=1e-5)  # unweighted


def test_a_long_prompt_is_its_chunks_encoded_separately_and_joined_on_the_token_axis(sd, reference_clip):
    text = ", ".join(["a red circle"] * 30)  # 119 tokens: two chunks
    chunks = prompt.tokenize(Tokenizer(), text)
    (encoded,) = cond.encode_text(sd, text)
    assert len(chunks) == 2 and encoded.context.shape == (1, 154, 128)
    with torch.no_grad():
        expected = torch.cat([reference_clip(ids_of(chunk)).last_hidden_state for chunk in chunks], dim=1)
    torch.testing.assert_close(encoded.context, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoded.pooled, expected[:, 76], rtol=1e-5, atol=1e-5)  # chunk 1's EOS is its last


def test_weights_in_a_later_chunk_use_the_empty_prompts_states_at_the_same_position(sd, reference_clip):
    text = " ".join(["cat"] * 80) + " (red:0.5)"
    chunks = prompt.tokenize(Tokenizer(), text)
    assert chunks[1][6] == (RED, 0.5)
    (encoded,) = cond.encode_text(sd, text)
    with torch.no_grad():
        plain = torch.cat([reference_clip(ids_of(chunk)).last_hidden_state for chunk in chunks], dim=1)
        empty = reference_clip(ids_of(padded())).last_hidden_state
    expected = plain.clone()
    expected[:, 77 + 6] = empty[:, 6] + (plain[:, 77 + 6] - empty[:, 6]) * 0.5
    torch.testing.assert_close(encoded.context, expected, rtol=1e-5, atol=1e-5)


# --- clip skip ----------------------------------------------------------------------------------------------------


def final_norm_of_hidden(clip, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """transformers' hidden_states[layer] through the final layer norm: what clip skip means."""
    with torch.no_grad():
        hidden = clip(ids, output_hidden_states=True).hidden_states[layer]
        return clip.final_layer_norm(hidden)  # transformers >= 5.6 has no text_model level


def test_clip_skip_reads_hidden_layer_minus_n_through_the_final_layer_norm(sd, reference_clip):
    skipped = dataclasses.replace(sd, clip_layer=-2)
    ids = ids_of(padded(A, RED, CIRCLE))
    expected = final_norm_of_hidden(reference_clip, ids, -2)
    assert not torch.allclose(expected, final_norm_of_hidden(reference_clip, ids, -1))
    (encoded,) = cond.encode_text(skipped, "a red circle")
    torch.testing.assert_close(encoded.context, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(skipped.encode_prompt(["a red circle"]), expected, rtol=1e-5, atol=1e-5)
    # the pooled output stays the last layer's, as ComfyUI's
    torch.testing.assert_close(encoded.pooled, final_norm_of_hidden(reference_clip, ids, -1)[:, 4], rtol=1e-5,
                               atol=1e-5)
    assert sd.clip_layer is None  # replace made a new value; the loaded one reads the family default


def test_clip_skip_weights_against_the_empty_prompt_at_the_same_layer(sd, reference_clip):
    (encoded,) = cond.encode_text(dataclasses.replace(sd, clip_layer=-2), "(red:1.3) circle")
    plain = final_norm_of_hidden(reference_clip, ids_of(padded(RED, CIRCLE)), -2)
    empty = final_norm_of_hidden(reference_clip, ids_of(padded()), -2)
    expected = plain.clone()
    expected[:, 1] = empty[:, 1] + (plain[:, 1] - empty[:, 1]) * 1.3
    torch.testing.assert_close(encoded.context, expected, rtol=1e-5, atol=1e-5)


def test_clip_skip_on_a_deeper_encoder_matches_transformers_at_every_layer():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = TextEncoderConfig(width=64, layers=4, mlp_width=128)
    ours = TextEncoder(config)
    randomize(ours, torch.Generator().manual_seed(3))
    theirs = CLIPTextModel(CLIPTextConfig(hidden_act="quick_gelu", hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=4, num_attention_heads=1, bos_token_id=BOS,
                                          eos_token_id=EOS)).eval()
    weights = {key.removeprefix("text_model."): value for key, value in ours.state_dict().items()
               if "position_ids" not in key}  # a buffer transformers makes itself
    theirs.load_state_dict(weights, strict=True)
    ids = ids_of(padded(A, RED, CIRCLE, CAT))
    for layer in (-1, -2, -3, -4):
        with torch.no_grad():
            torch.testing.assert_close(ours(ids, layer=layer), final_norm_of_hidden(theirs, ids, layer), rtol=1e-5,
                                       atol=1e-5)
    with pytest.raises(ValueError, match=r"clip layer -5 does not exist: this text encoder has 4 layers"):
        ours(ids, layer=-5)


def test_a_clip_layer_beyond_the_encoders_depth_is_refused(sd):
    with pytest.raises(ValueError, match=r"clip layer -3 does not exist.*2 layers.*-1 \(the last\) to -2"):
        cond.encode_text(dataclasses.replace(sd, clip_layer=-3), "a cat")
    with pytest.raises(ValueError, match="clip layer 0 does not exist"):
        sd.text_encoder(ids_of(padded()), layer=0)
