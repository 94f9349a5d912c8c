"""Textual-inversion embedding files: every form in the wild read to its vectors, prompt encodings equal to diffusers'
load_textual_inversion on the same file, and bad files refused by name."""

import pytest
import torch
from diffusers.loaders import TextualInversionLoaderMixin
from safetensors.torch import save_file

from nodegraph.sd import conditioning as cond
from nodegraph.sd.embeddings import EmbeddingError, read_embedding
from reference import reference_models, reference_tokenizer

WIDTH = 128  # the tiny checkpoint's text encoder


def vectors(count: int, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def write(path, content):
    if path.suffix == ".safetensors":
        save_file(content, str(path))
    else:
        torch.save(content, path)
    return path


def a1111(tensor):
    """A1111's .pt layout."""
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": tensor}, "name": "style", "step": 1500,
            "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "sd15"}


# (file name, what it holds, the vectors expected): the forms diffusers' load_textual_inversion also reads
DIFFUSERS_FORMS = {
    "emb_params.safetensors": ({"emb_params": vectors(3)}, vectors(3)),
    "one_token.safetensors": ({"<style>": vectors(1)[0]}, vectors(1)),
    "a1111.pt": (a1111(vectors(2)), vectors(2)),
    "bare.pt": (vectors(4), vectors(4)),
}


@pytest.mark.parametrize("name", DIFFUSERS_FORMS)
def test_each_form_reads_to_its_vectors(tmp_path, name):
    content, expected = DIFFUSERS_FORMS[name]
    path = write(tmp_path / name, content)
    assert torch.equal(read_embedding(path, WIDTH, allow_pickle=True), expected)


def test_flattened_string_to_param_and_sdxl_files_read_their_sd1_vectors(tmp_path):
    flat = write(tmp_path / "flat.safetensors", {"string_to_param.*": vectors(2)})
    assert torch.equal(read_embedding(flat, WIDTH), vectors(2))
    sdxl = write(tmp_path / "sdxl.safetensors", {"clip_g": vectors(2, 256, seed=1), "clip_l": vectors(2)})
    assert torch.equal(read_embedding(sdxl, WIDTH), vectors(2))


def test_half_precision_vectors_come_back_as_float32(tmp_path):
    path = write(tmp_path / "half.safetensors", {"emb_params": vectors(2).half()})
    read = read_embedding(path, WIDTH)
    assert read.dtype == torch.float32 and torch.equal(read, vectors(2).half().float())


class DiffusersHost(TextualInversionLoaderMixin):
    """The least of a pipeline that load_textual_inversion needs."""

    hf_device_map = None
    components = {}


@pytest.mark.parametrize("name", DIFFUSERS_FORMS)
def test_prompt_encodings_equal_diffusers_load_textual_inversion(tmp_path, sd, tiny_checkpoint, tiny_config, name):
    content, _ = DIFFUSERS_FORMS[name]
    path = write(tmp_path / name, content)
    tokenizer, text_encoder = reference_tokenizer(), reference_models(tiny_checkpoint, tiny_config)[2]
    host = DiffusersHost()
    host.load_textual_inversion(str(path), token="<style>", tokenizer=tokenizer, text_encoder=text_encoder)
    text = host.maybe_convert_prompt("a <style> red circle, (blue square)", tokenizer)  # <style> <style>_1 ...
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = text_encoder(ids).last_hidden_state
    embedding = lambda wanted, **_: read_embedding(path, WIDTH, allow_pickle=True) if wanted == "style" else None
    (ours,) = cond.encode_text(sd, r"a embedding:style red circle, \(blue square\)", embedding)
    torch.testing.assert_close(ours.context, expected, rtol=1e-5, atol=1e-5)


# --- bad files ----------------------------------------------------------------------------------------------------


def test_a_corrupt_file_is_refused_naming_it(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(EmbeddingError, match=r"garbage\.safetensors: not a readable \.safetensors file"):
        read_embedding(garbage, WIDTH)
    truncated = write(tmp_path / "cut.safetensors", {"emb_params": vectors(8)})
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(EmbeddingError, match=r"cut\.safetensors: .*truncated"):
        read_embedding(truncated, WIDTH)
    broken_pickle = tmp_path / "broken.pt"
    broken_pickle.write_bytes(b"PK\x03\x04 this is no torch file")
    with pytest.raises(EmbeddingError, match=r"broken\.pt: cannot read as a weights-only torch file"):
        read_embedding(broken_pickle, WIDTH, allow_pickle=True)


def test_an_embedding_of_another_width_is_refused_naming_the_file_and_both_widths(tmp_path):
    path = write(tmp_path / "sd2-style.safetensors", {"emb_params": vectors(2, 1024)})
    with pytest.raises(EmbeddingError, match=r"sd2-style\.safetensors: its vectors are 1024 wide, but this text "
                                             r"encoder's are 128"):
        read_embedding(path, WIDTH)


def test_a_pickled_file_is_read_only_when_allowed(tmp_path):
    path = write(tmp_path / "style.pt", a1111(vectors(1)))
    with pytest.raises(EmbeddingError, match=r"style\.pt: '\.pt' files are Python pickles.*allow-pickled-models"):
        read_embedding(path, WIDTH)
    assert torch.equal(read_embedding(path, WIDTH, allow_pickle=True), vectors(1))


def test_a_file_with_no_recognisable_vectors_is_refused_listing_its_keys(tmp_path):
    path = write(tmp_path / "lora.safetensors", {"lora_up.weight": vectors(2), "lora_down.weight": vectors(2)})
    with pytest.raises(EmbeddingError, match=r"no embedding vectors found.*2 tensors \(lora_down\.weight, lora_up"):
        read_embedding(path, WIDTH)
    ints = write(tmp_path / "ints.safetensors", {"emb_params": torch.ones(2, WIDTH, dtype=torch.int64)})
    with pytest.raises(EmbeddingError, match="holds no vectors"):
        read_embedding(ints, WIDTH)


def test_non_finite_vectors_are_refused(tmp_path):
    bad = vectors(2)
    bad[1, 3] = float("nan")
    with pytest.raises(EmbeddingError, match="NaN or infinite"):
        read_embedding(write(tmp_path / "nan.safetensors", {"emb_params": bad}), WIDTH)
