"""Each LoRA format in the wild, on the tiny random checkpoint: every patched UNet and text-encoder weight equals its
definition (W + strength * (alpha/rank) * up @ down, and LoCon, LoHa, LoKr, DoRA as tests/lora_files.py writes them
out), every other parameter is the base's own, and no key is left unmatched."""

import pytest
import torch

import lora_files as lf
from nodegraph.sd.lora import match_lora, patch_module, read_lora_file

TOLERANCE = 1e-6  # float32 arithmetic in another order


@pytest.fixture(scope="module")
def weights(tiny_checkpoint):
    return lf.base_weights(tiny_checkpoint)


@pytest.fixture(scope="module")
def layers(weights):
    return lf.targets(weights)


@pytest.fixture(scope="module")
def unet_names(tiny_checkpoint):
    return lf.diffusers_unet_names(tiny_checkpoint)


def dense(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.to_dense() if parameter.is_mkldnn else parameter


def apply(sd, path, strength):
    patches = match_lora(path, read_lora_file(path), sd.unet, sd.text_encoder)
    return patches, {"unet": patch_module(sd.unet, patches.unet, strength),
                     "text_encoder": patch_module(sd.text_encoder, patches.text_encoder, strength)}


def check(sd, weights, expected: dict, views: dict, strength: float) -> None:
    """`expected`: (part, module path) -> Entry. Patched weights by definition, all others the base's objects."""
    for (part, layer), entry in expected.items():
        actual = dense(views[part].get_parameter(layer + ".weight"))
        want = entry.expected(weights[part][layer], strength)
        assert actual.shape == want.shape and actual.dtype == torch.float32
        error = float((actual.double() - want.double()).norm() / want.double().norm())
        assert error <= TOLERANCE, f"{part} {layer}: relative error {error:.2e}"
    for part in ("unet", "text_encoder"):
        changed = {layer + ".weight" for p, layer in expected if p == part}
        base = getattr(sd, part)
        for name, parameter in base.named_parameters():
            if name not in changed:
                assert views[part].get_parameter(name) is parameter, f"{part} {name} should be shared"
        for name, buffer in base.named_buffers():
            assert views[part].get_buffer(name) is buffer


def build(tmp_path, weights, layers, name, make, style="kohya", parts=("unet", "text_encoder"), only=None):
    """A file whose entries are make(weight, generator, index) for every target layer (or those `only` keeps)."""
    generator = torch.Generator().manual_seed(7)
    entries, expected = {}, {}
    for part in parts:
        for index, layer in enumerate(layers[part]):
            if only is not None and not only(part, layer, weights[part][layer]):
                continue
            entry = make(weights[part][layer], generator, index)
            entries[name(part, layer)] = entry
            expected[part, layer] = entry
    return lf.write_lora(tmp_path / "lora.safetensors", entries, style=style), expected


def per_module_alpha(weight, generator, index):
    return lf.lora(weight, generator, rank=4, alpha=(1.0, 2.0, 8.0, None)[index % 4])


@pytest.mark.parametrize("strength", [1.0, 0.7, -1.5])
def test_kohya_ldm_names_with_per_module_alpha_locon_convs_and_text_encoder(sd, weights, layers, tmp_path, strength):
    path, expected = build(tmp_path, weights, layers, lf.kohya_name, per_module_alpha)
    assert any(w.ndim == 4 and w.shape[-1] == 3 for w in (weights[p][l] for p, l in expected))  # LoCon 3x3
    assert any(w.ndim == 4 and w.shape[-1] == 1 for w in (weights[p][l] for p, l in expected))  # and 1x1
    patches, views = apply(sd, path, strength)
    assert patches.unmatched == ()
    assert len(patches.unet) == len(layers["unet"]) and len(patches.text_encoder) == len(layers["text_encoder"])
    check(sd, weights, expected, views, strength)


def test_kohya_diffusers_names(sd, weights, layers, unet_names, tmp_path):
    name = lambda part, layer: lf.kohya_diffusers_name(part, layer, unet_names)  # noqa: E731
    path, expected = build(tmp_path, weights, layers, name, per_module_alpha)
    patches, views = apply(sd, path, 0.8)
    assert patches.unmatched == ()
    check(sd, weights, expected, views, 0.8)


def test_sdxl_style_te1_names_map_to_the_sd1_text_encoder_as_comfyui_does(sd, weights, layers, tmp_path):
    name = lambda part, layer: "lora_te1_" + layer.replace(".", "_")  # noqa: E731
    path, expected = build(tmp_path, weights, layers, name, per_module_alpha, parts=("text_encoder",))
    patches, views = apply(sd, path, 1.0)
    assert patches.unmatched == () and not patches.unet
    check(sd, weights, expected, views, 1.0)


@pytest.mark.parametrize("style,name", [
    ("peft", lf.peft_name),  # unet./text_encoder. prefixes, lora_A/lora_B
    ("diffusers", lf.peft_name),  # lora.down/lora.up
])
def test_diffusers_and_peft_files_without_alpha_scale_by_one(sd, weights, layers, unet_names, tmp_path, style, name):
    path, expected = build(tmp_path, weights, layers, lambda p, l: name(p, l, unet_names),
                           lambda w, g, i: lf.lora(w, g, rank=4), style=style)
    patches, views = apply(sd, path, 0.6)
    assert patches.unmatched == ()
    check(sd, weights, expected, views, 0.6)


def test_peft_text_encoder_keys_without_the_text_model_level_of_transformers_5(sd, weights, layers, tmp_path):
    name = lambda part, layer: "text_encoder." + layer.removeprefix("text_model.")  # noqa: E731
    path, expected = build(tmp_path, weights, layers, name, lambda w, g, i: lf.lora(w, g, rank=2), style="peft",
                           parts=("text_encoder",))
    patches, views = apply(sd, path, 1.0)
    assert patches.unmatched == ()
    check(sd, weights, expected, views, 1.0)


def test_diffusers_attention_processor_files(sd, weights, layers, unet_names, tmp_path):
    attention = lambda part, layer, w: ".to_" in layer  # noqa: E731
    path, expected = build(tmp_path, weights, layers, lambda p, l: lf.processor_name(p, l, unet_names),
                           lambda w, g, i: lf.lora(w, g, rank=4, alpha=2.0), style="processor", parts=("unet",),
                           only=attention)
    assert any(name.endswith("processor.to_out_lora.up.weight") for name in read_lora_file(path))
    patches, views = apply(sd, path, 1.0)
    assert patches.unmatched == () and len(patches.unet) == len(expected)
    check(sd, weights, expected, views, 1.0)


def test_locon_tucker_mid_on_3x3_convolutions(sd, weights, layers, tmp_path):
    three_by_three = lambda part, layer, w: w.ndim == 4 and w.shape[-1] == 3  # noqa: E731
    path, expected = build(tmp_path, weights, layers, lf.kohya_name,
                           lambda w, g, i: lf.lora(w, g, rank=4, alpha=3.0, mid=True), only=three_by_three)
    assert any(name.endswith(".lora_mid.weight") for name in read_lora_file(path))
    patches, views = apply(sd, path, 0.9)
    assert patches.unmatched == ()
    check(sd, weights, expected, views, 0.9)


def test_loha_on_linears_and_convolutions_with_tucker_cores_on_3x3(sd, weights, layers, tmp_path):
    def make(weight, generator, index):
        return lf.loha(weight, generator, rank=4, alpha=2.0, tucker=weight.ndim == 4 and weight.shape[-1] == 3)
    path, expected = build(tmp_path, weights, layers, lf.kohya_name, make)
    assert any(name.endswith(".hada_t1") for name in read_lora_file(path))
    patches, views = apply(sd, path, 0.5)
    assert patches.unmatched == ()
    check(sd, weights, expected, views, 0.5)


def test_lokr_with_whole_factored_and_tucker_factors(sd, weights, layers, tmp_path):
    variants = ("w1 whole, w2 factored", "w1 factored, w2 whole", "both whole", "w1 factored, w2 factored")

    def make(weight, generator, index):
        variant = "w2 tucker" if weight.ndim == 4 and weight.shape[-1] == 3 and index % 2 else variants[index % 4]
        return lf.lokr(weight, generator, variant=variant)
    path, expected = build(tmp_path, weights, layers, lf.kohya_name, make)
    keys = set(read_lora_file(path))
    assert {s for s in (".lokr_w1", ".lokr_w1_a", ".lokr_w2", ".lokr_w2_a", ".lokr_t2") if any(k.endswith(s) for k in keys)} \
        == {".lokr_w1", ".lokr_w1_a", ".lokr_w2", ".lokr_w2_a", ".lokr_t2"}
    patches, views = apply(sd, path, 1.3)
    assert patches.unmatched == ()
    check(sd, weights, expected, views, 1.3)


@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_dora_magnitudes_per_output_and_per_input_channel(sd, weights, layers, tmp_path, strength):
    def make(weight, generator, index):
        return lf.dora(weight, generator, rank=4, alpha=2.0, on_output=index % 2 == 0)
    path, expected = build(tmp_path, weights, layers, lf.kohya_name, make)
    patches, views = apply(sd, path, strength)
    assert patches.unmatched == ()
    check(sd, weights, expected, views, strength)


def test_full_differences_of_weights_and_biases(sd, weights, layers, tmp_path):
    first = layers["unet"][0]
    bias = sd.unet.get_parameter(first + ".bias").detach()
    diff_b = torch.randn(bias.shape, generator=torch.Generator().manual_seed(3)) * 0.1
    path, expected = build(tmp_path, weights, layers, lf.kohya_name, lambda w, g, i: lf.difference(w, g),
                           parts=("unet",), only=lambda part, layer, w: layer == first)
    tensors = read_lora_file(path) | {lf.kohya_name("unet", first) + ".diff_b": diff_b}
    patches = match_lora(path, tensors, sd.unet, sd.text_encoder)
    view = patch_module(sd.unet, patches.unet, 0.5)
    torch.testing.assert_close(view.get_parameter(first + ".bias"), bias + 0.5 * diff_b, rtol=0, atol=1e-7)
    actual = dense(view.get_parameter(first + ".weight"))
    torch.testing.assert_close(actual, expected["unet", first].expected(weights["unet"][first], 0.5))


def test_factors_stored_in_fp16_are_computed_in_float32(sd, weights, layers, tmp_path):
    """The file's fp16 factors, converted to float32 before any arithmetic (as ComfyUI's intermediate dtype)."""
    layer = next(l for l in layers["unet"] if ".to_q" in l)
    entry = lf.lora(weights["unet"][layer], torch.Generator().manual_seed(5), rank=4, alpha=2.0)
    path = lf.write_lora(tmp_path / "half.safetensors", {lf.kohya_name("unet", layer): entry}, dtype=torch.float16)
    up, down = (t.half().float() for t in (entry.parts[".lora_up.weight"], entry.parts[".lora_down.weight"]))
    patches, views = apply(sd, path, 1.0)
    actual = views["unet"].get_parameter(layer + ".weight")
    torch.testing.assert_close(actual, weights["unet"][layer] + 0.5 * (up @ down), rtol=0, atol=1e-6)
