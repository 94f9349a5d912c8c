"""Random LoRA files for tests, in the formats found in the wild, each entry with the weight it must give by its
definition, written here independently of nodegraph.sd.lora (and of its key tables: diffusers' names come from
diffusers' own checkpoint conversion).

An entry is one layer's adapter: its factors under kohya's suffixes, and `expected(W, strength)`, the patched weight.
A file is a dict {file base name: entry}; `write_lora` renames the factors for the file's format and saves it.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from checkpoints import TinyConfig, ldm_original_config

UNET_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "cond_stage_model.transformer."
# The layers LoRA trainers adapt: attention and feed-forward linears, the transformers' 1x1 projections, and (LoCon)
# every convolution of the res blocks and the samplers.
UNET_TARGET = re.compile(r"(attn[12]\.to_(q|k|v|out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out|in_layers\.2|out_layers\.3"
                         r"|skip_connection|\.op|upsample.*\.conv|output_blocks\.\d+\.\d\.conv)$")
TEXT_TARGET = re.compile(r"(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


@dataclass
class Entry:
    parts: dict[str, torch.Tensor]  # kohya suffix (".lora_up.weight", ".alpha", ".hada_w1_a", ...) -> tensor
    expected: Callable[[torch.Tensor, float], torch.Tensor]  # (W float32, strength) -> patched W


def base_weights(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet": {module path: weight}, "text_encoder": {...}} of the checkpoint file, float32."""
    state = load_file(str(checkpoint))
    parts = {"unet": {}, "text_encoder": {}}
    for key, tensor in state.items():
        for part, prefix in (("unet", UNET_PREFIX), ("text_encoder", TEXT_PREFIX)):
            if key.startswith(prefix) and key.endswith(".weight"):
                parts[part][key[len(prefix):-len(".weight")]] = tensor.float()
    return parts


def targets(weights: dict[str, dict[str, torch.Tensor]]) -> dict[str, list[str]]:
    return {"unet": sorted(p for p in weights["unet"] if UNET_TARGET.search(p)),
            "text_encoder": sorted(p for p in weights["text_encoder"] if TEXT_TARGET.search(p))}


def diffusers_unet_names(checkpoint: Path, config: TinyConfig = TinyConfig()) -> dict[str, str]:
    """Our (LDM) UNet module path -> diffusers' path, found by diffusers' own conversion: each random tensor is
    unique, so the converted tensor equal to ours names our layer in diffusers' model."""
    from diffusers.loaders import single_file_utils as sfu
    state = load_file(str(checkpoint))
    unet_config = sfu.create_unet_diffusers_config_from_ldm(ldm_original_config(config), state)
    converted = sfu.convert_ldm_unet_checkpoint(state, unet_config)
    ours = {key[len(UNET_PREFIX):-len(".weight")]: tensor for key, tensor in state.items()
            if key.startswith(UNET_PREFIX) and key.endswith(".weight")}
    names = {}
    for key, tensor in converted.items():
        if key.endswith(".weight"):
            same = [path for path, t in ours.items() if t.shape == tensor.shape and torch.equal(t, tensor)]
            assert len(same) == 1, f"{key}: {len(same)} equal tensors in the checkpoint"
            names[same[0]] = key[:-len(".weight")]
    return names


# --- entries: one adapter per layer, by definition ----------------------------------------------------------------


def _randn(generator, *shape, std=1.0):
    return torch.randn(*shape, generator=generator) * std


def lora(weight: torch.Tensor, generator, rank: int = 4, alpha: float | None = None, mid: bool = False) -> Entry:
    """Plain LoRA / LoCon: W + s * (alpha/rank) * up @ down (convolutions: up [out, r, 1, 1], down [r, in, kh, kw];
    with `mid`, LoCon's Tucker form: down [r, in, 1, 1], core [r, r, kh, kw])."""
    out, fan_in = weight.shape[0], weight[0].numel()
    up = _randn(generator, out, rank, std=0.5 / math.sqrt(rank))
    if mid:
        down = _randn(generator, rank, weight.shape[1], std=1 / math.sqrt(weight.shape[1]))
        core = _randn(generator, rank, rank, *weight.shape[2:], std=1 / math.sqrt(rank * weight[0, 0].numel()))
        # diff[o, i, h, w] = sum_r,q up[o, r] core[r, q, h, w] down[q, i]
        diff = torch.tensordot(torch.tensordot(up, core, dims=([1], [0])), down, dims=([1], [0])).permute(0, 3, 1, 2)
        parts = {".lora_up.weight": up[:, :, None, None], ".lora_down.weight": down[:, :, None, None],
                 ".lora_mid.weight": core}
    else:
        down = _randn(generator, rank, fan_in, std=1 / math.sqrt(fan_in))
        diff = (up @ down).reshape(weight.shape)
        if weight.ndim == 4:
            parts = {".lora_up.weight": up[:, :, None, None], ".lora_down.weight": down.reshape(rank, *weight.shape[1:])}
        else:
            parts = {".lora_up.weight": up, ".lora_down.weight": down}
    scale = 1.0 if alpha is None else alpha / rank
    if alpha is not None:
        parts[".alpha"] = torch.tensor(float(alpha))
    return Entry(parts, lambda w, s: w + s * scale * diff)


def loha(weight: torch.Tensor, generator, rank: int = 4, alpha: float = 2.0, tucker: bool = False) -> Entry:
    """LoHa: W + s * (alpha/rank) * (w1_a @ w1_b) ⊙ (w2_a @ w2_b); with Tucker cores (convolutions), each factor is
    sum_i,j t[i, j, h, w] a[i, o] b[j, c]."""
    out, fan_in = weight.shape[0], weight[0].numel()
    factors = []
    parts = {}
    for n in (1, 2):
        if tucker:
            a = _randn(generator, rank, out, std=0.7 / math.sqrt(rank))
            b = _randn(generator, rank, weight.shape[1], std=1 / math.sqrt(weight.shape[1]))
            t = _randn(generator, rank, rank, *weight.shape[2:], std=1 / math.sqrt(rank))
            factor = torch.tensordot(torch.tensordot(t, a, dims=([0], [0])), b, dims=([0], [0]))  # [h, w, o, c]
            factors.append(factor.permute(2, 3, 0, 1))
            parts[f".hada_t{n}"] = t
        else:
            a = _randn(generator, out, rank, std=0.7 / math.sqrt(rank))
            b = _randn(generator, rank, fan_in, std=1 / math.sqrt(fan_in))
            factors.append((a @ b).reshape(weight.shape))
        parts[f".hada_w{n}_a"], parts[f".hada_w{n}_b"] = a, b
    parts[".alpha"] = torch.tensor(alpha)
    diff = factors[0] * factors[1]
    return Entry(parts, lambda w, s: w + s * (alpha / rank) * diff)


def kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kronecker product by its definition: block (i, j) is a[i, j] * b (b may have kernel dimensions)."""
    rows = [torch.cat([a[i, j] * b for j in range(a.shape[1])], dim=1) for i in range(a.shape[0])]
    return torch.cat(rows, dim=0)


def lokr(weight: torch.Tensor, generator, factor: int = 2, rank: int = 2, alpha: float = 3.0,
         variant: str = "w1 whole, w2 factored") -> Entry:
    """LoKr: W + s * scale * kron(w1, w2), w1 [factor, factor]; scale alpha/rank of whichever factor is a product
    a @ b (w2's when both are), 1 when both are whole. Variants: "w1 whole, w2 factored", "w1 factored, w2 whole",
    "both whole", "w2 tucker" (convolutions)."""
    out, inp = weight.shape[0], weight.shape[1]
    kernel = tuple(weight.shape[2:])
    o2, i2 = out // factor, inp // factor
    parts, scale = {}, 1.0
    if variant.startswith("w1 factored"):
        w1_a, w1_b = _randn(generator, factor, rank, std=0.5), _randn(generator, rank, factor, std=0.5)
        w1 = w1_a @ w1_b
        parts.update({".lokr_w1_a": w1_a, ".lokr_w1_b": w1_b})
        scale = alpha / rank
    else:
        w1 = _randn(generator, factor, factor, std=0.5)
        parts[".lokr_w1"] = w1
    fan = i2 * math.prod(kernel)
    if variant == "w2 tucker":
        a, b = _randn(generator, rank, o2, std=0.5), _randn(generator, rank, i2, std=1 / math.sqrt(i2))
        t = _randn(generator, rank, rank, *kernel, std=1 / math.sqrt(rank))
        w2 = torch.tensordot(torch.tensordot(t, a, dims=([0], [0])), b, dims=([0], [0])).permute(2, 3, 0, 1)
        parts.update({".lokr_w2_a": a, ".lokr_w2_b": b, ".lokr_t2": t})
        scale = alpha / rank
    elif variant.endswith("w2 factored"):
        a, b = _randn(generator, o2, rank, std=0.5), _randn(generator, rank, fan, std=1 / math.sqrt(fan))
        w2 = (a @ b).reshape(o2, i2, *kernel)
        parts.update({".lokr_w2_a": a, ".lokr_w2_b": b})
        scale = alpha / rank
    else:
        w2 = _randn(generator, o2, i2, *kernel, std=1 / math.sqrt(fan))
        parts[".lokr_w2"] = w2
    parts[".alpha"] = torch.tensor(alpha)
    diff = kron(w1, w2)
    return Entry(parts, lambda w, s: w + s * scale * diff)


def dora(weight: torch.Tensor, generator, rank: int = 4, alpha: float = 2.0, on_output: bool = True) -> Entry:
    """DoRA over a LoRA, as ComfyUI's weight_decompose merges it: V = W + (alpha/rank) * up @ down; magnitudes m
    (dora_scale) per output channel [out, 1, ...] (divided by the norms of W's rows) or per input channel
    [1, in, ...] (divided by the norms of V's columns); result W + s * (m * V / norm - W)."""
    entry = lora(weight, generator, rank, alpha)
    delta = entry.expected(torch.zeros_like(weight), 1.0)
    shape = [weight.shape[0]] + [1] * (weight.ndim - 1) if on_output else [1, weight.shape[1]] + [1] * (weight.ndim - 2)
    magnitude = 0.5 + torch.rand(shape, generator=generator)
    entry.parts[".dora_scale"] = magnitude
    eps = torch.finfo(torch.float32).eps

    def expected(w, s):
        merged = w + delta
        if on_output:
            norms = torch.stack([w[o].norm() for o in range(w.shape[0])]).reshape(shape)
        else:
            norms = torch.stack([merged[:, i].norm() for i in range(w.shape[1])]).reshape(shape)
        return w + s * (merged * magnitude / (norms + eps) - w)

    return Entry(entry.parts, expected)


def difference(weight: torch.Tensor, generator) -> Entry:
    diff = _randn(generator, *weight.shape, std=0.05)
    return Entry({".diff": diff}, lambda w, s: w + s * diff)


# --- files ----------------------------------------------------------------------------------------------------------

STYLES = {  # how each format spells a plain LoRA's up and down factors
    "kohya": (".lora_up.weight", ".lora_down.weight"),
    "peft": (".lora_B.weight", ".lora_A.weight"),
    "diffusers": (".lora.up.weight", ".lora.down.weight"),
    "processor": ("_lora.up.weight", "_lora.down.weight"),
}


def write_lora(path: Path, entries: dict[str, Entry], style: str = "kohya", dtype=torch.float32,
               extra: dict[str, torch.Tensor] | None = None) -> Path:
    up, down = STYLES[style]
    tensors = {}
    for base, entry in entries.items():
        for suffix, tensor in entry.parts.items():
            suffix = {".lora_up.weight": up, ".lora_down.weight": down}.get(suffix, suffix)
            tensors[base + suffix] = tensor.to(dtype).contiguous() if tensor.is_floating_point() else tensor
    tensors.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def kohya_name(part: str, path: str) -> str:
    return ("lora_unet_" if part == "unet" else "lora_te_") + path.replace(".", "_")


def kohya_diffusers_name(part: str, path: str, unet_names: dict[str, str]) -> str:
    return "lora_unet_" + unet_names[path].replace(".", "_") if part == "unet" else kohya_name(part, path)


def peft_name(part: str, path: str, unet_names: dict[str, str]) -> str:
    return "unet." + unet_names[path] if part == "unet" else "text_encoder." + path


def processor_name(part: str, path: str, unet_names: dict[str, str]) -> str:
    """diffusers' attention-processor files (no `unet.` prefix): `...attn1.processor.to_q` (`to_out` without `.0`)."""
    if part != "unet":
        return peft_name(part, path, unet_names)
    return re.sub(r"\.(to_[qkv]|to_out)(\.0)?$", r".processor.\1", unet_names[path])
