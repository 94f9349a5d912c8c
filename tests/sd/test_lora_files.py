"""Bad LoRA files are refused with the file's name and what is wrong: unreadable files, pickles without the opt-in,
LoRAs of other model families, entries that contradict themselves. Keys that match nothing are collected for the
caller to report."""

import pytest
import torch
from safetensors.torch import save_file

import lora_files as lf
from nodegraph.sd.lora import LoraError, match_lora, read_lora_file


@pytest.fixture(scope="module")
def weights(tiny_checkpoint):
    return lf.base_weights(tiny_checkpoint)


@pytest.fixture
def good(tmp_path, weights):
    """A small valid kohya file: one attention layer and one text-encoder layer."""
    generator = torch.Generator().manual_seed(0)
    layer, text_layer = "input_blocks.1.1.transformer_blocks.0.attn2.to_k", "text_model.encoder.layers.0.mlp.fc1"
    return lf.write_lora(tmp_path / "good.safetensors", {
        lf.kohya_name("unet", layer): lf.lora(weights["unet"][layer], generator, alpha=1.0),
        lf.kohya_name("text_encoder", text_layer): lf.lora(weights["text_encoder"][text_layer], generator)})


def refused(sd, path, tensors=None) -> str:
    with pytest.raises(LoraError) as caught:
        match_lora(path, read_lora_file(path) if tensors is None else tensors, sd.unet, sd.text_encoder)
    assert str(path) in str(caught.value)
    return caught.value.problem


def test_a_corrupt_header_is_refused(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all....." + b"\0" * 100)
    with pytest.raises(LoraError, match="corrupt.safetensors: not a readable .safetensors file: header is not JSON"):
        read_lora_file(path)


def test_a_truncated_file_is_refused_before_reading_tensors(good, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(LoraError, match="cut.safetensors: .*truncated"):
        read_lora_file(path)


@pytest.mark.parametrize("content,problem", [(b"", "too short"), (b"\x02\0\0\0\0\0\0\0{}", "holds no tensors")])
def test_an_empty_file_is_refused(tmp_path, content, problem):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(content)
    with pytest.raises(LoraError, match=f"empty.safetensors: .*{problem}"):
        read_lora_file(path)


def test_a_missing_file_or_another_file_type_is_refused(tmp_path):
    with pytest.raises(LoraError, match="gone.safetensors: no such file"):
        read_lora_file(tmp_path / "gone.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LoraError, match="notes.txt: '.txt' is not a LoRA file type"):
        read_lora_file(tmp_path / "notes.txt")


def test_pickles_need_the_opt_in_and_are_read_weights_only(tmp_path, good):
    tensors = read_lora_file(good)
    path = tmp_path / "old.pt"
    torch.save(tensors, path)
    with pytest.raises(LoraError, match="old.pt: '.pt' files are Python pickles"):
        read_lora_file(path)
    assert read_lora_file(path, allow_pickle=True).keys() == tensors.keys()
    torch.save({"state_dict": tensors}, path)  # some trainers nest it
    assert read_lora_file(path, allow_pickle=True).keys() == tensors.keys()
    torch.save({**tensors, "epoch": 3}, path)
    with pytest.raises(LoraError, match="old.pt: 1 entries are not tensors: epoch"):
        read_lora_file(path, allow_pickle=True)


def test_an_sdxl_lora_with_second_text_encoder_keys_is_refused(sd, good, tmp_path):
    tensors = read_lora_file(good) | {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4)}
    assert "second text encoder" in refused(sd, tmp_path / "sdxl.safetensors", tensors)


def test_a_lora_whose_shapes_do_not_fit_is_refused_as_another_model_family(sd, tmp_path):
    """SD 2.x's text encoder is 1024 wide and its cross-attention takes 1024-wide context; ours (tiny) 128."""
    path = tmp_path / "sd2.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(1024, 4),
               "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 1024),
               "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(32, 4),
               "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 1024)},
              str(path))
    problem = refused(sd, path)
    assert problem.startswith("2 layer(s) do not fit this SD 1.x model") and "another model" in problem
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj gives a (1024, 1024) difference for a (128, 128)" in problem


@pytest.mark.parametrize("keys", [
    ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight"],  # a checkpoint
    ["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"],  # a Flux LoRA
])
def test_a_file_naming_no_layer_of_the_model_is_refused(sd, tmp_path, keys):
    path = tmp_path / "other.safetensors"
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))
    assert "names a layer of this SD 1.x model" in refused(sd, path)


@pytest.mark.parametrize("change,problem", [
    (lambda t, base: t.pop(base + ".lora_down.weight"), "has alpha, lora_up.weight but no lora_down.weight"),
    (lambda t, base: t.__setitem__(base + ".hada_w1_a", torch.zeros(2, 2)), "has LoRA and LoHa factors for one weight"),
    (lambda t, base: t.__setitem__(base + ".alpha", torch.ones(3)), "alpha: expected one number"),
    (lambda t, base: t.__setitem__(base + ".lora_down.weight", torch.zeros(3, 128)), "its factors do not fit together"),
    (lambda t, base: t.__setitem__(base + ".dora_scale", torch.ones(7, 1)), "has a (7, 1) dora_scale"),
])
def test_an_entry_that_contradicts_itself_is_refused_naming_it(sd, good, tmp_path, change, problem):
    tensors = read_lora_file(good)
    base = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    change(tensors, base)
    message = refused(sd, good, tensors)
    assert base in message and problem in message


def test_keys_that_match_nothing_are_collected_not_dropped(sd, good):
    tensors = read_lora_file(good) | {
        "lora_unet_no_such_block.lora_up.weight": torch.zeros(2, 2),  # an adapter for a layer we lack
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.oft_blocks": torch.zeros(2, 2),  # an unknown kind
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_mid.weight_typo": torch.zeros(2),
    }
    tensors["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_v.alpha"] = torch.tensor(4.0)  # alpha alone
    patches = match_lora(good, tensors, sd.unet, sd.text_encoder)
    assert len(patches.unet) == 1 and len(patches.text_encoder) == 1
    assert patches.unmatched == tuple(sorted([
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_mid.weight_typo",
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_v.alpha",
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.oft_blocks",
        "lora_unet_no_such_block.lora_up.weight"]))
    message = patches.describe_unmatched()
    assert message.startswith(f"4 key(s) of {good} match no layer of this model") and "lora_unet_no_such_block" in message


def test_a_model_only_match_counts_text_encoder_keys_as_matched_when_given_the_encoder(sd, good):
    assert match_lora(good, read_lora_file(good), sd.unet, sd.text_encoder).unmatched == ()
    without = match_lora(good, read_lora_file(good), sd.unet, None)
    assert without.unmatched and all(key.startswith("lora_te_") for key in without.unmatched)
