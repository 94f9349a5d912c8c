"""Loading single-file checkpoints as real files come, and clear errors for files that are not."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodegraph.sd import CheckpointError, load_checkpoint
from checkpoints import write_checkpoint

POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def encode(sd, text="a red circle"):
    return sd.text_encoder(sd.tokenizer([text]))


@pytest.fixture(scope="module")
def weights(tiny_checkpoint):
    return load_file(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float32)


def save(tmp_path, weights, name="model.safetensors"):
    path = tmp_path / name
    save_file(weights, str(path))
    return path


@pytest.mark.parametrize("file_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_in_the_requested_dtype(tmp_path, tiny_config, file_dtype):
    path = write_checkpoint(tmp_path / "half.safetensors", tiny_config, dtype=file_dtype)
    sd = load_checkpoint(path, device="cpu", dtype=torch.float32)
    assert sd.unet.out[2].weight.dtype == torch.float32
    assert sd.dtype == torch.float32


def test_bf16_request_runs_every_part_in_bf16(tiny_checkpoint):
    sd = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for part in (sd.unet, sd.vae, sd.text_encoder) for p in part.parameters()} == {torch.bfloat16}


def test_fp16_request_keeps_the_vae_in_fp32(tiny_checkpoint):
    sd = load_checkpoint(tiny_checkpoint, device="cpu", dtype=torch.float16)
    assert sd.unet.out[2].weight.dtype == torch.float16
    assert {p.dtype for p in sd.vae.parameters()} == {torch.float32}


def test_ema_copies_and_schedule_buffers_are_ignored(tmp_path, weights, reference):
    extra = {"betas": torch.rand(1000), "alphas_cumprod": torch.rand(1000), "model_ema.decay": torch.tensor(0.9999),
             "model_ema.num_updates": torch.tensor(10, dtype=torch.int32),
             "model_ema.diffusion_modelinput_blocks00weight": weights["model.diffusion_model.input_blocks.0.0.weight"] + 1}
    sd = load_checkpoint(save(tmp_path, {**weights, **extra}), device="cpu", dtype=torch.float32)
    assert torch.equal(sd.unet.input_blocks[0][0].weight.to_dense(), reference.unet.input_blocks[0][0].weight.to_dense())


@pytest.mark.parametrize("position_ids", [None, torch.arange(77).unsqueeze(0).float() + 0.4, torch.arange(77)[None].flip(1)])
def test_stored_position_ids_are_never_trusted(tmp_path, weights, reference, position_ids):
    weights = dict(weights)
    del weights[POSITION_IDS]
    if position_ids is not None:
        weights[POSITION_IDS] = position_ids
    sd = load_checkpoint(save(tmp_path, weights), device="cpu", dtype=torch.float32)
    assert torch.equal(encode(sd), encode(reference))


def test_files_without_the_text_model_level_load(tmp_path, weights, reference):
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in weights.items()}
    sd = load_checkpoint(save(tmp_path, old), device="cpu", dtype=torch.float32)
    assert torch.equal(encode(sd), encode(reference))


def test_truncated_file_is_refused_naming_it(tmp_path, tiny_checkpoint):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(tiny_checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors: not a readable \.safetensors file"):
        load_checkpoint(path, device="cpu")


def test_safetensors_that_is_no_sd_checkpoint_is_refused(tmp_path):
    path = save(tmp_path, {"encoder.weight": torch.ones(3, 3)}, "lora.safetensors")
    with pytest.raises(CheckpointError, match=r"lora\.safetensors: not a checkpoint nodegraph can run: it has no model\.diffusion_model\.input_blocks"):
        load_checkpoint(path, device="cpu")


def test_missing_key_is_named(tmp_path, weights):
    key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    broken = {k: v for k, v in weights.items() if k != key}
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 1 missing key\(s\): " + key.replace(".", r"\.")):
        load_checkpoint(save(tmp_path, broken), device="cpu")


def test_unexpected_key_inside_a_part_is_named(tmp_path, weights):
    broken = {**weights, "first_stage_model.decoder.up.9.block.0.conv1.weight": torch.ones(1)}
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): first_stage_model\.decoder\.up\.9"):
        load_checkpoint(save(tmp_path, broken), device="cpu")


def test_wrong_shape_is_named(tmp_path, weights):
    key = "model.diffusion_model.middle_block.0.emb_layers.1.bias"
    broken = {**weights, key: torch.ones(3)}
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.") + r" \(3,\) \(expected \(64,\)\)"):
        load_checkpoint(save(tmp_path, broken), device="cpu")


def test_pickled_ckpt_is_refused_without_opt_in(tmp_path, weights):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": weights}, path)
    with pytest.raises(CheckpointError, match=r"model\.ckpt: '\.ckpt' files are Python pickles.*allow_pickle=True"):
        load_checkpoint(path, device="cpu")


def test_pickled_ckpt_loads_weights_only_with_opt_in(tmp_path, weights, reference):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": weights, "global_step": 1}, path)
    sd = load_checkpoint(path, device="cpu", dtype=torch.float32, allow_pickle=True)
    assert torch.equal(encode(sd), encode(reference))


def test_pickle_with_code_is_refused_even_with_opt_in(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: cannot read as a weights-only torch file"):
        load_checkpoint(path, device="cpu", allow_pickle=True)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.safetensors: no such file"):
        load_checkpoint(tmp_path / "nothere.safetensors", device="cpu")
