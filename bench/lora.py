"""bench lora: one LoRA applied to the SD 1.5-sized model, nodegraph's patched view against diffusers'
load_lora_weights + fuse_lora on the same weights, each in a fresh process.

The LoRA is random, rank 32, over every attention and feed-forward linear, every transformer projection, every
res-block and sampler convolution (LoCon) and the text encoder's attention and MLP: kohya's format with diffusers'
names and one alpha, which diffusers loads exactly. Measured: the time to apply it (reading the file included),
the time of a strength change (ours: a new view from the cached file's tensors; diffusers: unfuse + fuse at the new
scale), the resident memory the applied LoRA adds, and how far the two UNets' answers are apart afterwards.
"""

import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.checkpoint import CACHE

RANK, ALPHA = 32, 16.0
SWEEP = ("attn1.to_", "attn2.to_", "ff.net", "proj_in", "proj_out", "in_layers.2", "out_layers.3", "emb_layers.1",
         "skip_connection", ".op", ".conv")
TEXT_SWEEP = ("self_attn.", "mlp.fc")


def sd15_random_lora(path: Path = CACHE / "lora-rank32-fp16.safetensors", seed: int = 0) -> Path:
    """The benchmark's LoRA for the SD 1.5 layout, built once (fp16, as published LoRAs are)."""
    if path.exists():
        return path
    from nodegraph.sd.clip import TextEncoder, TextEncoderConfig
    from nodegraph.sd.lora.keys import diffusers_unet_blocks, diffusers_unet_path
    from nodegraph.sd.unet import UNet, UNetConfig

    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        unet, text = UNet(UNetConfig()), TextEncoder(TextEncoderConfig())
    blocks = diffusers_unet_blocks(unet.config)
    tensors = {}

    def add(base: str, weight: torch.Tensor) -> None:
        out, fan_in = weight.shape[0], weight[0].numel()
        down_shape = (RANK, *weight.shape[1:]) if weight.ndim == 4 else (RANK, fan_in)
        up_shape = (out, RANK, 1, 1) if weight.ndim == 4 else (out, RANK)
        tensors[base + ".lora_down.weight"] = (torch.randn(down_shape, generator=generator) * fan_in ** -0.5).half()
        # scaled so that the LoRA changes each weight by ~4%, as a trained one may
        tensors[base + ".lora_up.weight"] = (torch.randn(up_shape, generator=generator) * 0.5 / RANK).half()
        tensors[base + ".alpha"] = torch.tensor(ALPHA)

    for name, weight in unet.named_parameters():
        layer = name.removesuffix(".weight")
        if name.endswith(".weight") and weight.ndim >= 2 and any(part in layer for part in SWEEP):
            add("lora_unet_" + diffusers_unet_path(layer, blocks).replace(".", "_"), weight)
    for name, weight in text.named_parameters():
        layer = name.removesuffix(".weight")
        if name.endswith(".weight") and any(part in layer for part in TEXT_SWEEP):
            add("lora_te_" + layer.replace(".", "_"), weight)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def lora_worker(which: str, checkpoint: str, lora: str, out: str) -> None:
    """Runs in a fresh process: load the model, apply the LoRA, change its strength; report times and memory, and
    save the UNet's answer at the final strength for comparison."""
    from bench.run import SD_BETAS, diffusers_pipeline, status_bytes
    from nodegraph.device import pick_dtype
    from nodegraph.sd.layers import give_back_freed_memory

    dtype = pick_dtype(torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=generator).to(dtype)
    context = torch.randn(1, 77, 768, generator=generator).to(dtype)
    answers = {}

    def settled_rss() -> int:
        gc.collect()
        give_back_freed_memory()
        return status_bytes("VmRSS")

    if which == "nodegraph":
        from nodegraph.sd import load_checkpoint
        from nodegraph.sd.lora import match_lora, patch_module, read_lora_file
        sd = load_checkpoint(checkpoint, device="cpu", dtype=dtype)
        with torch.no_grad():
            answers["base"] = sd.unet(x, torch.tensor([500]), context).float()

        def apply(strength, tensors=None):
            tensors = read_lora_file(lora) if tensors is None else tensors
            patches = match_lora(lora, tensors, sd.unet, sd.text_encoder)
            return tensors, patch_module(sd.unet, patches.unet, strength), \
                patch_module(sd.text_encoder, patches.text_encoder, strength)

        before = settled_rss()
        started = time.perf_counter()
        tensors, unet, text = apply(1.0)
        apply_s = time.perf_counter() - started
        added = settled_rss() - before
        base_ids = {id(t) for t in [*sd.unet.parameters(), *sd.text_encoder.parameters()]}
        patched = sum(stored_bytes(p) for p in [*unet.parameters(), *text.parameters()] if id(p) not in base_ids)
        before = settled_rss()
        started = time.perf_counter()
        views = [(unet, text), apply(0.5, tensors)[1:]]  # the first stays alive, as the executor's cache keeps it
        change_s = time.perf_counter() - started
        added_by_second_view = settled_rss() - before
        unet, text = views.pop()
        answer = lambda x, t, context: unet(x, t, context)  # noqa: E731
        lora_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    else:
        from diffusers import DDPMScheduler
        pipe = diffusers_pipeline(Path(checkpoint), dtype, DDPMScheduler(**SD_BETAS))
        with torch.no_grad():
            answers["base"] = pipe.unet(x, torch.tensor([500]), encoder_hidden_states=context).sample.float()
        before = settled_rss()
        started = time.perf_counter()
        pipe.load_lora_weights(lora)
        pipe.fuse_lora(lora_scale=1.0)
        apply_s = time.perf_counter() - started
        added = settled_rss() - before
        patched = lora_bytes = added_by_second_view = None
        started = time.perf_counter()
        pipe.unfuse_lora()
        pipe.fuse_lora(lora_scale=0.5)
        change_s = time.perf_counter() - started
        answer = lambda x, t, context: pipe.unet(x, t, encoder_hidden_states=context).sample  # noqa: E731
    with torch.no_grad():
        answers["lora"] = answer(x, torch.tensor([500]), context).float()
    torch.save(answers, out)
    print(json.dumps({"apply_s": apply_s, "strength_change_s": change_s, "added_rss_bytes": added,
                      "second_view_added_rss_bytes": added_by_second_view,
                      "patched_bytes": patched, "lora_tensor_bytes": lora_bytes, "dtype": str(dtype)}))


def stored_bytes(tensor: torch.Tensor) -> int:
    """The bytes a weight occupies as the model holds it: a packed (oneDNN) weight's blocked layout pads channels."""
    return torch.ops.mkldnn._nbytes(tensor) if tensor.is_mkldnn else tensor.numel() * tensor.element_size()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bench_lora(checkpoint: Path, repeats: int) -> dict:
    import tempfile

    from bench.run import ROOT, save
    lora = sd15_random_lora()
    runs = {"nodegraph": [], "diffusers": []}
    answers = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(max(1, repeats)):
            for which in runs:  # alternating, so drift in machine speed hits both alike
                out = Path(folder) / f"{which}.pt"
                report = subprocess.run([sys.executable, "-m", "bench.run", "--lora-worker", which, str(checkpoint),
                                         str(lora), str(out)], cwd=ROOT, capture_output=True, text=True, check=True)
                runs[which].append(json.loads(report.stdout.strip().splitlines()[-1]))
                answers[which] = torch.load(out, weights_only=True)
    results = {}
    for which, samples in runs.items():
        results[which] = {key: statistics.median(s[key] for s in samples) for key in ("apply_s", "strength_change_s")}
        results[which] |= {"spread_apply_s": max(s["apply_s"] for s in samples) - min(s["apply_s"] for s in samples),
                           "added_rss_bytes": max(s["added_rss_bytes"] for s in samples), "runs": samples}
    ours, theirs = results["nodegraph"], results["diffusers"]
    patched, lora_bytes = runs["nodegraph"][0]["patched_bytes"], runs["nodegraph"][0]["lora_tensor_bytes"]
    gap, floor, change = (relative(answers["nodegraph"][a], answers["diffusers"][b])
                          for a, b in (("lora", "lora"), ("base", "base"), ("base", "lora")))
    results.update(patched_bytes=patched, lora_tensor_bytes=lora_bytes, unet_relative_difference=gap,
                   unet_relative_difference_without_lora=floor, lora_change_of_unet_answer=change,
                   dtype=runs["nodegraph"][0]["dtype"], rank=RANK, file=lora.name)
    gib = 2 ** 30
    print(f"\nLoRA rank {RANK} ({lora_bytes / 2**20:.0f} MiB of fp16 factors) on the SD 1.5-sized model, "
          f"{results['dtype']}, fresh process each")
    print(f"  {'':<26} {'nodegraph':>12} {'diffusers':>12} {'ratio':>7}")
    for label, key in (("apply (file read incl.)", "apply_s"), ("strength change", "strength_change_s")):
        print(f"  {label:<26} {ours[key]:10.2f} s {theirs[key]:10.2f} s {ours[key] / theirs[key]:6.2f}x")
    print(f"  {'resident memory added':<26} {ours['added_rss_bytes'] / gib:8.2f} GiB {theirs['added_rss_bytes'] / gib:8.2f} GiB"
          f" {ours['added_rss_bytes'] / max(theirs['added_rss_bytes'], 1):6.2f}x")
    second = max(s["second_view_added_rss_bytes"] for s in runs["nodegraph"])
    results["second_view_added_rss_bytes"] = second
    print(f"  patched weights (the view's own tensors, as stored: packed layouts padded): {patched / gib:.3f} GiB; the first "
          f"view adds {(ours['added_rss_bytes'] - lora_bytes) / patched:.4f}x that (with the process's first use of "
          f"oneDNN's reorder kernels), the LoRA file's cached tensors {lora_bytes / 2**20:.0f} MiB "
          f"({ours['added_rss_bytes'] / patched:.4f}x in all); the second view (the strength change) adds "
          f"{second / patched:.4f}x")
    print(f"  UNet answers after the strength change, ours vs diffusers: relative difference {gap:.1e} "
          f"({floor:.1e} without the LoRA; the LoRA moves the answer by {change:.1e})")
    save("lora", results)
    return results
