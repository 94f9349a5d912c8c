r"""ComfyUI's prompt syntax and long prompts, as ComfyUI's CLIPTextEncode reads them (comfy/sd1_clip.py).

Weights. `(text)` multiplies the weight of what it holds by 1.1, once per level of nesting; `(text:1.3)` sets it to
1.3, whatever the outer levels say; a group's number applies to the group it closes, so `((a))` is 1.21,
`((a:1.5))` 1.5 and `((a):1.5)` 1.5 * 1.1 = 1.65. `\(` and `\)` are literal parentheses; `[text]` is plain text
(brackets and all). When any weight is not 1, a weighted token's encoding is moved away from the empty prompt's
encoding at the same position: z_empty + (z - z_empty) * weight.

Embeddings. `embedding:name` (at the start of a weighted piece or after whitespace) stands for the vectors of a
textual-inversion embedding, one token slot each, weighted like the text around it. The name ends at whitespace, `<`
or `[`; commas after it are text. A missing embedding is left out, with a warning.

Long prompts. Each weighted piece (and each embedding) is a group of tokens. Chunks are BOS + up to 75 tokens +
EOS, padded with EOS to 77. A group that does not fit in what is left of a chunk is cut there if it has 8 tokens or
more; a shorter one starts the next chunk. Chunks are encoded separately and joined on the token axis: a prompt's
context is [1, 77k, C]. The pooled output is the last layer's state at the first EOS of the first chunk, unweighted.
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .tokenizer import BOS, EOS

log = logging.getLogger(__name__)

EMBEDDING_PREFIX = "embedding:"
BIG_GROUP = 8  # groups of at least this many tokens may be cut at a chunk's end (ComfyUI's max_word_length)
NESTING_FACTOR = 1.1
# Escaped parentheses hide from the weight parser as private-use characters, and come back as plain ones after it.
ESCAPES = {"\\(": "\ue000", "\\)": "\ue001"}
# "embedding:" starts an embedding only at the start of a piece or after whitespace ("a,embedding:x" is text).
EMBEDDING_START = re.compile(r"(?<=\s)" + re.escape(EMBEDDING_PREFIX))
NAME_END = re.compile(r"[<\[]")

Token = int | torch.Tensor  # a token id, or one vector of an embedding
Chunk = list[tuple[Token, float]]  # a chunk's 77 positions: (token, weight)
EmbeddingLookup = Callable[[str], torch.Tensor | None]  # name as written -> vectors [n, C] (or [C]); None: missing


@dataclass(frozen=True)
class Piece:
    """A stretch of prompt text with one weight: plain text, or an `embedding:` reference (text without the prefix)."""

    text: str
    weight: float
    is_embedding: bool = False


# --- reading the syntax ---------------------------------------------------------------------------------------


def top_level_groups(text: str) -> list[str]:
    """The text split into plain runs and whole top-level `(...)` groups. As ComfyUI splits it: an unclosed `(` runs
    to the end as plain text, and a stray `)` leaves what follows unsplit."""
    groups, current, depth = [], "", 0
    for char in text:
        if char == "(" and depth == 0 and current:
            groups.append(current)
            current = ""
        current += char
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                groups.append(current)
                current = ""
    if current:
        groups.append(current)
    return groups


def weighted_texts(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """(text, weight) runs of a prompt whose escapes are already hidden: ComfyUI's nesting and `:number` rules."""
    runs = []
    for group in top_level_groups(text):
        if not (len(group) >= 2 and group[0] == "(" and group[-1] == ")"):
            runs.append((group, weight))
            continue
        inner, inner_weight = group[1:-1], weight * NESTING_FACTOR
        colon = inner.rfind(":")
        if colon > 0:  # "(text:1.3)"; a colon not followed by a number ("(a:b)") is text
            try:
                inner_weight = float(inner[colon + 1:])
                inner = inner[:colon]
            except ValueError:
                pass
        runs += weighted_texts(inner, inner_weight)
    return runs


def pieces(text: str) -> list[Piece]:
    """A prompt as weighted pieces of text and embedding references, in order."""
    for escape, hidden in ESCAPES.items():
        text = text.replace(escape, hidden)
    result = []
    for run, weight in weighted_texts(text):
        for escape, hidden in ESCAPES.items():
            run = run.replace(hidden, escape[1])
        for index, part in enumerate(EMBEDDING_START.split(run)):
            if index > 0 or part.startswith(EMBEDDING_PREFIX):
                result.append(Piece(part[len(EMBEDDING_PREFIX):] if index == 0 else part, weight, True))
            elif part:
                result.append(Piece(part, weight))
    return result


def split_reference(reference: str) -> tuple[str, str]:
    """`name rest of text` (after "embedding:") -> (name, the text after it). The name ends at whitespace, `<` or
    `[`; the rest is rejoined with single spaces, as ComfyUI does."""
    words = reference.strip("\n").split()
    if not words:
        return "", ""
    name, rest = words[0], " ".join(words[1:])
    cut = NAME_END.search(name)
    if cut:
        rest = name[cut.start():] + (" " + rest if rest else "")
        name = name[:cut.start()]
    return name, rest


def embedding_names(text: str) -> list[str]:
    """Every embedding name a prompt may look up (also the comma-stripped form tried when the name itself is
    missing): what a cache must watch."""
    names = []
    for piece in pieces(text):
        if piece.is_embedding:
            name, _ = split_reference(piece.text)
            names += [name] + ([name.strip(",")] if name.strip(",") != name else [])
    return [name for name in dict.fromkeys(names) if name]


# --- tokens and chunks ----------------------------------------------------------------------------------------


def find_embedding(name: str, embedding: EmbeddingLookup | None) -> tuple[torch.Tensor | None, str]:
    """(vectors or None, text given back to the prompt). A name missing as written is tried without its commas,
    which are then text again: "embedding:x, red" reads x and ", red" (found or not, as ComfyUI does)."""
    lookup = embedding if embedding is not None else (lambda _: None)
    found = lookup(name) if name else None
    stripped = name.strip(",")
    if found is None and stripped != name:
        return (lookup(stripped) if stripped else None), name[len(name.rstrip(",")):]
    return found, ""


def token_groups(tokenizer, text: str, embedding: EmbeddingLookup | None = None, width: int | None = None,
                 warn: Callable[[str], None] = log.warning,
                 encoder: str | None = None) -> list[list[tuple[Token, float]]]:
    """The prompt's groups of (token, weight): one per weighted piece of text, one per embedding. An embedding
    missing, or of another width than the `encoder`'s `width`, is left out with a warning."""
    groups = []
    for piece in pieces(text):
        words = piece.text
        if piece.is_embedding:
            name, rest = split_reference(piece.text)
            vectors, commas = find_embedding(name, embedding)
            if vectors is None:
                warn(f"embedding:{name} does not exist: it is left out of the prompt, as ComfyUI does" if name else
                     "'embedding:' is not followed by a name: it is left out of the prompt")
            else:
                vectors = vectors.reshape(-1, vectors.shape[-1])
                if width is not None and vectors.shape[1] != width:  # ComfyUI warns and leaves it out, so do we
                    warn(f"embedding:{name} has {vectors.shape[1]}-wide vectors, but the {encoder or 'text'} encoder "
                         f"takes {width}-wide ones (an embedding of another model family): it is left out of "
                         f"{'that encoder' + chr(39) + 's reading of ' if encoder else ''}the prompt, as ComfyUI does")
                else:
                    groups.append([(vector, piece.weight) for vector in vectors])
            words = " ".join(part for part in (commas, rest) if part)
            if not words:
                continue
        groups.append([(token, piece.weight) for token in tokenizer.tokens(words)])
    return groups


def chunks_of(groups: list[list[tuple[Token, float]]], length: int = 77, pad_token: int = EOS) -> list[Chunk]:
    """Groups laid out in chunks of BOS + tokens + EOS, padded to `length` (see the module's doc)."""
    limit = length - 1  # a chunk's positions before its closing EOS
    chunks, chunk = [], [(BOS, 1.0)]

    def close(chunk: Chunk) -> None:
        chunks.append(chunk + [(EOS, 1.0)] + [(pad_token, 1.0)] * (length - len(chunk) - 1))

    for group in groups:
        may_cut = len(group) >= BIG_GROUP
        while group:
            room = limit - len(chunk)
            if len(group) <= room:
                chunk, group = chunk + group, []
                continue
            if may_cut:
                chunk, group = chunk + group[:room], group[room:]
            close(chunk)
            chunk = [(BOS, 1.0)]
    close(chunk)
    return chunks


def tokenize(tokenizer, text: str, embedding: EmbeddingLookup | None = None, width: int | None = None,
             warn: Callable[[str], None] = log.warning, pad_token: int = EOS, encoder: str | None = None) -> list[Chunk]:
    """A prompt in ComfyUI's syntax -> its chunks, each `tokenizer.context_length` (token, weight) pairs."""
    return chunks_of(token_groups(tokenizer, text, embedding, width, warn, encoder), tokenizer.context_length,
                     pad_token)


# --- encoding -------------------------------------------------------------------------------------------------


def input_vectors(text_encoder, chunks: list[Chunk]) -> torch.Tensor:
    """The text encoder's input vectors [k, 77, C] of the chunks: token embeddings, with embeddings' vectors in
    their slots."""
    ids = torch.tensor([[token if isinstance(token, int) else EOS for token, _ in chunk] for chunk in chunks])
    vectors = text_encoder.token_embeddings(ids)
    for row, chunk in enumerate(chunks):
        for position, (token, _) in enumerate(chunk):
            if not isinstance(token, int):
                vectors[row, position] = token.to(vectors)
    return vectors


@torch.no_grad()
def encode(text_encoder, chunks: list[Chunk], layer: int = -1, layer_norm: bool = True,
           pad_token: int = EOS) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunks -> (context [1, 77k, C], pooled [1, C]), float32 on the CPU, from hidden layer `layer` (the final layer
    norm applied to it iff `layer_norm`). The pooled output is the last layer's normed state at the first chunk's
    EOS, projected where the encoder has a projection (SDXL's bigG).

    The chunks (and the empty prompt, when any weight is not 1) go through the encoder as one batch."""
    weighted = any(weight != 1.0 for chunk in chunks for _, weight in chunk)
    empty = [(BOS, 1.0), (EOS, 1.0)] + [(pad_token, 1.0)] * (len(chunks[0]) - 2)
    rows = chunks + ([empty] if weighted else [])
    states, last = text_encoder.from_embeddings(input_vectors(text_encoder, rows), layer, layer_norm)
    context = states[:len(chunks)].float()
    if weighted:
        empty_state = states[-1].float()
        weights = torch.tensor([[weight for _, weight in chunk] for chunk in chunks], device=context.device)[..., None]
        # only weighted positions change: at weight 1 the formula would still round differently
        context = torch.where(weights != 1.0, (context - empty_state) * weights + empty_state, context)
    first_eos = next(i for i, (token, _) in enumerate(chunks[0]) if isinstance(token, int) and token == EOS)
    pooled = text_encoder.project_pooled(last[0:1, first_eos]).float()
    return context.reshape(1, -1, context.shape[-1]).cpu(), pooled.cpu()


def encode_prompt(sd, text: str, embedding: Callable[..., torch.Tensor | None] | None = None,
                  warn: Callable[[str], None] = log.warning,
                  texts_by_encoder: dict[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt in ComfyUI's syntax, encoded by a loaded checkpoint's text encoders, each at its layer (the family's,
    or `sd.clip_layer`): (context [1, 77k, C], pooled [1, C']), float32 CPU. With two encoders (SDXL) each reads
    the prompt on its own (its own padding, weights against its own empty prompt) and their states are joined on
    the feature axis, cut to the shorter; the pooled output is the last encoder's (bigG's projected state).
    `texts_by_encoder` gives some encoders a text of their own ({"clip_g": ..., "clip_l": ...}: CLIPTextEncodeSDXL's
    text_g and text_l); the others read `text`. Then, as ComfyUI's node does, the encoder with fewer chunks gets
    empty-prompt chunks appended until both have as many, so neither prompt is cut.
    `embedding(name, encoder=)` gives the vectors of `embedding:name` for an encoder ("clip_l", "clip_g", ...),
    None when there are none; vectors of another width than the encoder's are left out of it with a warning, as
    ComfyUI does; `warn` hears of the missing ones (once per prompt)."""
    texts_by_encoder = texts_by_encoder or {}
    unknown = set(texts_by_encoder) - {recipe.name for recipe in sd.family.text}
    if unknown:
        raise ValueError(f"{sd.family.name} has no text encoder {', '.join(sorted(unknown))}: its encoders are "
                         f"{', '.join(recipe.name for recipe in sd.family.text)}")
    for recipe in sd.family.text:  # a bad layer fails before any work
        sd.text_encoders[recipe.name].layer_index(sd.text_layer(recipe.name))
    warned = []
    tokenized = {}
    for recipe in sd.family.text:
        encoder = sd.text_encoders[recipe.name]
        lookup = None if embedding is None else (lambda name, recipe=recipe: embedding(name, encoder=recipe.name))
        tokenized[recipe.name] = tokenize(sd.tokenizer, texts_by_encoder.get(recipe.name, text), lookup,
                                          encoder.config.width,
                                          lambda message: None if message in warned else warned.append(message),
                                          recipe.pad_token, recipe.name if len(sd.family.text) > 1 else None)
    if texts_by_encoder and len(tokenized) > 1:
        longest = max(len(chunks) for chunks in tokenized.values())
        for recipe in sd.family.text:
            empty = chunks_of([], sd.tokenizer.context_length, recipe.pad_token)
            tokenized[recipe.name] = tokenized[recipe.name] + empty * (longest - len(tokenized[recipe.name]))
    contexts, pooled = [], None
    for recipe in sd.family.text:
        context, pooled = encode(sd.text_encoders[recipe.name], tokenized[recipe.name], sd.text_layer(recipe.name),
                                 recipe.layer_norm, recipe.pad_token)
        contexts.append(context)
    for message in warned:
        warn(message)
    length = min(context.shape[1] for context in contexts)
    return torch.cat([context[:, :length] for context in contexts], dim=-1), pooled
