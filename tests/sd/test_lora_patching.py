"""Patched views (nodegraph.sd.lora.patch): the base stays as loaded, a view shares every tensor the LoRA does not
change, views stack from the base in float32, strength 0 is the module itself, and on the CPU changed weights are
packed as the loader packs them."""


import pytest
import torch
from safetensors.torch import load_file, save_file

import lora_files as lf
from nodegraph.sd import load_checkpoint
from nodegraph.sd.lora import match_lora, patch_module, patch_record, read_lora_file, unpatched

UNET_PREFIX = lf.UNET_PREFIX


def dense(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.to_dense() if parameter.is_mkldnn else parameter


def storages(module: torch.nn.Module) -> dict[int, int]:
    """Bytes of each distinct tensor the module holds, by identity (packed tensors have no data pointer)."""
    return {id(t): t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]}


@pytest.fixture(scope="module")
def weights(tiny_checkpoint):
    return lf.base_weights(tiny_checkpoint)


@pytest.fixture(scope="module")
def layers(weights):
    return lf.targets(weights)


def lora_file(path, weights, layers, seed, keep=lambda layer: True, make=None):
    """A kohya LoRA over the UNet layers `keep` selects: (file, {layer: entry})."""
    generator = torch.Generator().manual_seed(seed)
    make = make or (lambda w: lf.lora(w, generator, rank=4, alpha=2.0))
    entries = {layer: make(weights["unet"][layer]) for layer in layers["unet"] if keep(layer)}
    file = lf.write_lora(path, {lf.kohya_name("unet", layer): entry for layer, entry in entries.items()})
    return file, entries


def unet_patches(sd, file):
    return match_lora(file, read_lora_file(file), sd.unet, sd.text_encoder).unet


@pytest.fixture(scope="module")
def attention_lora(tmp_path_factory, weights, layers):
    return lora_file(tmp_path_factory.mktemp("a") / "a.safetensors", weights, layers, 1, lambda l: ".attn" in l)


@pytest.fixture(scope="module")
def conv_lora(tmp_path_factory, weights, layers):
    """Overlaps the attention LoRA on attn1.to_q, adds the convolutions."""
    return lora_file(tmp_path_factory.mktemp("b") / "b.safetensors", weights, layers, 2,
                     lambda l: "attn1.to_q" in l or "layers." in l)


def test_patching_leaves_the_base_module_as_loaded(sd, attention_lora):
    before = {name: (p, dense(p).clone()) for name, p in sd.unet.named_parameters()}
    view = patch_module(sd.unet, unet_patches(sd, attention_lora[0]), 1.0)
    assert view is not sd.unet and patch_record(sd.unet) is None and unpatched(view) is sd.unet
    for name, parameter in sd.unet.named_parameters():
        assert parameter is before[name][0] and torch.equal(dense(parameter), before[name][1])


def test_a_view_shares_every_unchanged_tensor_and_holds_only_the_changed_ones(sd, attention_lora):
    file, entries = attention_lora
    view = patch_module(sd.unet, unet_patches(sd, file), 1.0)
    changed = {layer + ".weight" for layer in entries}
    for name, parameter in sd.unet.named_parameters():
        mine = view.get_parameter(name)
        if name in changed:
            assert mine is not parameter
        else:
            assert mine is parameter
            if not parameter.is_mkldnn:
                assert mine.data_ptr() == parameter.data_ptr()
    for name, buffer in sd.unet.named_buffers():
        assert view.get_buffer(name).data_ptr() == buffer.data_ptr()
    # modules off the patched paths are the base's own objects; the path to a changed one is copied
    assert view.time_embed is sd.unet.time_embed and view.out is sd.unet.out
    assert view.input_blocks[1][1] is not sd.unet.input_blocks[1][1]
    assert view.input_blocks[1][0] is sd.unet.input_blocks[1][0]
    extra = set(storages(view)) - set(storages(sd.unet))
    assert sum(storages(view)[key] for key in extra) == sum(view.get_parameter(n).numel() * 4 for n in changed)


def test_strength_zero_or_no_adapters_gives_the_module_itself(sd, attention_lora):
    patches = unet_patches(sd, attention_lora[0])
    assert patch_module(sd.unet, patches, 0.0) is sd.unet
    assert patch_module(sd.unet, {}, 1.0) is sd.unet
    view = patch_module(sd.unet, patches, 1.0)
    assert patch_module(view, patches, 0) is view


def test_a_view_computes_what_a_checkpoint_with_the_merged_weights_computes(sd, tiny_checkpoint, tmp_path, weights,
                                                                            layers, conv_lora):
    """Independent of how the view is built: the same model loaded from a file with W + s*delta written in."""
    file, entries = conv_lora
    state = load_file(str(tiny_checkpoint))
    for layer, entry in entries.items():
        key = UNET_PREFIX + layer + ".weight"
        state[key] = entry.expected(state[key], 0.75).contiguous()
    save_file(state, str(tmp_path / "merged.safetensors"))
    merged = load_checkpoint(tmp_path / "merged.safetensors", device="cpu", dtype=torch.float32)
    view = patch_module(sd.unet, unet_patches(sd, file), 0.75)
    generator = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 128, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(view(x, 500, context), merged.unet(x, 500, context), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(sd.unet(x, 500, context), merged.unet(x, 500, context), atol=1e-3)


def test_stacked_loras_are_computed_from_the_base_in_float32_in_order(sd, weights, attention_lora, conv_lora):
    a_file, a_entries = attention_lora
    b_file, b_entries = conv_lora
    first = patch_module(sd.unet, unet_patches(sd, a_file), 0.5)
    stacked = patch_module(first, unet_patches(sd, b_file), -1.25)
    record = patch_record(stacked)
    assert record.base is sd.unet
    for layer in set(a_entries) | set(b_entries):
        want = weights["unet"][layer]
        if layer in a_entries:
            want = a_entries[layer].expected(want, 0.5)
        if layer in b_entries:
            want = b_entries[layer].expected(want, -1.25)
        torch.testing.assert_close(dense(stacked.get_parameter(layer + ".weight")), want, rtol=0, atol=2e-6)
        assert len(record.patches[layer + ".weight"]) == (layer in a_entries) + (layer in b_entries)
    only_a = next(layer for layer in a_entries if layer not in b_entries)
    assert stacked.get_parameter(only_a + ".weight") is first.get_parameter(only_a + ".weight")


def test_changing_a_strength_repatches_from_the_base_not_on_top(sd, weights, attention_lora):
    file, entries = attention_lora
    patches = unet_patches(sd, file)
    strong = patch_module(sd.unet, patches, 2.0)
    weak = patch_module(sd.unet, patches, 0.25)
    layer = next(iter(entries))
    torch.testing.assert_close(weak.get_parameter(layer + ".weight"),
                               entries[layer].expected(weights["unet"][layer], 0.25), rtol=0, atol=1e-6)
    assert strong.get_parameter(layer + ".weight") is not weak.get_parameter(layer + ".weight")


def test_bf16_on_the_cpu_patched_weights_are_packed_and_rounded_once(tiny_checkpoint, weights, attention_lora,
                                                                     conv_lora):
    """bf16 packs convolutions and linears (layers.py); a patched weight is (W + sum of deltas) in float32, cast once."""
    bf16 = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.bfloat16)
    (a_file, a_entries), (b_file, b_entries) = attention_lora, conv_lora
    stacked = patch_module(patch_module(bf16.unet, unet_patches(bf16, a_file), 1.0),
                           unet_patches(bf16, b_file), 0.5)
    packed = 0
    for layer in set(a_entries) | set(b_entries):
        base, mine = bf16.unet.get_parameter(layer + ".weight"), stacked.get_parameter(layer + ".weight")
        assert mine.is_mkldnn == base.is_mkldnn and mine.dtype == torch.bfloat16
        packed += mine.is_mkldnn
        want = dense(base).float()
        if layer in a_entries:
            want = a_entries[layer].expected(want, 1.0)
        if layer in b_entries:
            want = b_entries[layer].expected(want, 0.5)
        # float32 sums in another order may round a rare element the other way
        assert (dense(mine) != want.to(torch.bfloat16)).float().mean() < 1e-3, layer
        if layer in a_entries and layer in b_entries:  # rounding to bf16 between the two LoRAs would show
            twice = b_entries[layer].expected(a_entries[layer].expected(dense(base).float(), 1.0).bfloat16().float(), 0.5)
            assert (twice.to(torch.bfloat16) != want.to(torch.bfloat16)).float().mean() > 0.05
    assert packed > 0
    generator = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 128, generator=generator)
    with torch.no_grad():
        assert torch.isfinite(stacked(x, 500, context)).all()


def test_a_patched_text_encoder_encodes_prompts(sd, weights, layers, tmp_path):
    generator = torch.Generator().manual_seed(4)
    entries = {layer: lf.lora(weights["text_encoder"][layer], generator, rank=2) for layer in layers["text_encoder"]}
    file = lf.write_lora(tmp_path / "te.safetensors", {lf.kohya_name("text_encoder", l): e for l, e in entries.items()})
    patches = match_lora(file, read_lora_file(file), sd.unet, sd.text_encoder)
    clip = sd.with_text_encoder(patch_module(sd.text_encoder, patches.text_encoder, 1.0))
    assert not torch.allclose(clip.encode_prompt(["a red circle"]), sd.encode_prompt(["a red circle"]), atol=1e-3)
    assert sd.text_encoder.text_model.embeddings is clip.text_encoder.text_model.embeddings
