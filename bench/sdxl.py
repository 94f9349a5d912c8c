"""bench sdxl: a full-size SDXL base checkpoint (random fp16 weights in the real single-file layout), nodegraph
against diffusers on the same file, each measurement in a fresh process, ours and theirs alternating.

    python -m bench.run sdxl              # about 40 minutes on 2 CPU cores (builds the 6.9 GB file once)

Measured:
  - load to bf16: nodegraph's load_checkpoint against diffusers' StableDiffusionXLPipeline.from_single_file, given a
    local diffusers config folder (written here: model_index.json and each component's config, as the hub's
    stabilityai/stable-diffusion-xl-base-1.0 has them), so nothing is fetched. Wall time of the load call (imports
    apart) and the process's peak resident memory (VmHWM).
  - one UNet step with CFG (batch 2: cond + uncond) at 1024x1024 and 768x768 (latents 128x128, 96x96) in bf16: ours
    `sd.unet(x, t, context, y)` against diffusers' UNet2DConditionModel in its fastest CPU setup (channels_last, its
    default SDPA attention) on the same weights; time per step after a warm-up and how far the two answers are apart.
"""

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench.checkpoint import BIG_G, CACHE, SDXL_UNET, tensor_bytes

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = CACHE / "sdxl-random-fp16.safetensors"
DIFFUSERS_CONFIG = CACHE / "sdxl-diffusers-config"
SIZES = (1024, 768)  # SDXL's native size, and the one below it
SEED = 0

# The UNet and VAE sections of sd_xl_base.yaml, as diffusers' single-file converter reads them.
SDXL_LDM = {"model": {"params": {
    "scale_factor": 0.13025,
    "unet_config": {"params": {"in_channels": 4, "out_channels": 4, "num_res_blocks": 2, "num_head_channels": 64,
                               "use_linear_in_transformer": True, "adm_in_channels": 2816, "num_classes": "sequential",
                               "model_channels": 320, "attention_resolutions": [4, 2], "channel_mult": [1, 2, 4],
                               "transformer_depth": [1, 2, 10], "context_dim": 2048}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "z_channels": 4, "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2}}},
}}}


def sdxl_parts():
    """(file prefix, module on the meta device) of each part of an SDXL base file."""
    from nodegraph.sd.clip import TextEncoder, TextEncoderConfig
    from nodegraph.sd.openclip import OpenCLIPTextEncoder
    from nodegraph.sd.unet import UNet
    from nodegraph.sd.vae import VAE, VAEConfig

    with torch.device("meta"):
        return [("model.diffusion_model.", UNet(SDXL_UNET)), ("first_stage_model.", VAE(VAEConfig())),
                ("conditioner.embedders.0.transformer.", TextEncoder(TextEncoderConfig())),
                ("conditioner.embedders.1.model.", OpenCLIPTextEncoder(BIG_G))]


def random_like(key: str, meta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random values scaled like a trained network's (weights ~ N(0, 1/fan_in), norm scales ~1), so activations stay
    finite in bf16 and fp16; integer buffers (position ids) count up."""
    if not meta.is_floating_point():
        return torch.arange(meta.shape[-1]).reshape(meta.shape)
    fan_in = meta[0].numel() if meta.ndim >= 2 else 0
    if fan_in:
        tensor = torch.randn(meta.shape, generator=generator) * fan_in ** -0.5
    elif key.endswith("weight"):  # a 1-D weight is a norm's scale (GroupNorm in_layers.0, LayerNorm ln_1, ...)
        tensor = 1 + 0.1 * torch.randn(meta.shape, generator=generator)
    else:
        tensor = 0.02 * torch.randn(meta.shape, generator=generator)
    return tensor.half()


def sdxl_random_checkpoint(path: Path = CHECKPOINT, seed: int = SEED) -> Path:
    """SDXL base's single-file layout (1680 UNet, 248 VAE, 197 CLIP-L and 390 bigG keys), fp16, built once. Written
    as a stream, one tensor at a time (the safetensors format by hand: a JSON header of offsets, then the bytes), so
    the build holds one tensor in memory, not the 6.9 GB."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = sorted((prefix + key, meta) for prefix, module in sdxl_parts() for key, meta in module.state_dict().items())
    codes = {torch.float16: ("F16", 2), torch.int64: ("I64", 8)}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, meta in entries:
        dtype = torch.float16 if meta.is_floating_point() else torch.int64
        size = meta.numel() * codes[dtype][1]
        header[key] = {"dtype": codes[dtype][0], "shape": list(meta.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the tensor bytes start 8-aligned
    generator = torch.Generator().manual_seed(seed)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as file:
        try:
            file.write(len(encoded).to_bytes(8, "little") + encoded)
            for key, meta in entries:
                file.write(random_like(key, meta, generator).contiguous().numpy().tobytes())
        except BaseException:
            os.unlink(file.name)
            raise
    Path(file.name).replace(path)  # never a half-written checkpoint under the final name
    return path


def write_diffusers_config(folder: Path = DIFFUSERS_CONFIG) -> Path:
    """A local diffusers model folder without weights, as `from_single_file(config=...)` reads it: the pipeline's
    model_index.json, each model's config (from diffusers' own reading of sd_xl_base.yaml), tokenizers and scheduler."""
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTokenizer

    from nodegraph.sd.tokenizer import VOCAB_DIR

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = sfu.create_unet_diffusers_config_from_ldm(SDXL_LDM, {}, image_size=1024)
        vae = sfu.create_vae_diffusers_config_from_ldm(SDXL_LDM, {}, image_size=1024, scaling_factor=0.13025)
    files = {
        "model_index.json": {
            "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]},
        "unet/config.json": {"_class_name": "UNet2DConditionModel", **unet},
        "vae/config.json": {"_class_name": "AutoencoderKL", **vae, "force_upcast": True},
        "scheduler/scheduler_config.json": {
            "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
            "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear"},
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2))
    CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                   projection_dim=768, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                   pad_token_id=49407).save_pretrained(folder / "text_encoder")
    CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                   projection_dim=1280, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
                   architectures=["CLIPTextModelWithProjection"]).save_pretrained(folder / "text_encoder_2")
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):  # SDXL's second tokenizer pads with "!"
        CLIPTokenizer(str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt"), model_max_length=77,
                      pad_token=pad).save_pretrained(folder / name)
    return folder


# ---- workers: each runs in a fresh process and prints one JSON line ----

def status_bytes(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def drop_freed_memory() -> None:
    from nodegraph.sd.layers import give_back_freed_memory
    gc.collect()
    give_back_freed_memory()


def load_worker(which: str, path: str) -> dict:
    """Load the whole checkpoint to bf16: time of the load call and the peak resident memory of the process."""
    if which == "nodegraph":
        from nodegraph.sd import load_checkpoint
        load = lambda: load_checkpoint(path, device="cpu", dtype=torch.bfloat16)  # noqa: E731
    else:
        from diffusers import StableDiffusionXLPipeline
        from diffusers.utils import logging as diffusers_logging
        diffusers_logging.disable_progress_bar()
        load = lambda: StableDiffusionXLPipeline.from_single_file(  # noqa: E731
            path, config=str(DIFFUSERS_CONFIG), torch_dtype=torch.bfloat16, local_files_only=True, add_watermarker=False)
    imported_rss = status_bytes("VmRSS")
    started = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - started
    if which == "nodegraph":
        modules = [model.unet, model.vae, *model.text_encoders.values()]
    else:
        modules = [m for m in model.components.values() if isinstance(m, torch.nn.Module)]
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    # every weight really loaded: none left on the meta device
    return {"seconds": seconds, "peak_rss_bytes": status_bytes("VmHWM"), "rss_after_imports_bytes": imported_rss,
            "rss_loaded_bytes": status_bytes("VmRSS"), "modules": len(modules),
            "parameters": sum(t.numel() for t in tensors), "on_meta": sum(t.is_meta for t in tensors)}


def step_inputs(size: int):
    """One CFG step's inputs (batch 2: cond, uncond), the same in every process."""
    from nodegraph.sd.adm import sdxl_adm
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, size // 8, size // 8, generator=generator)
    context = torch.randn(2, 77, 2048, generator=generator)
    pooled = torch.randn(2, 1280, generator=generator)
    t = torch.tensor([500, 500])
    sizes = [size, size, 0, 0, size, size]  # height, width, crop top, crop left, target height, target width
    y = sdxl_adm(pooled, *sizes)
    return x, t, context, pooled, torch.tensor([sizes] * 2, dtype=torch.float32), y


def diffusers_unet(path: str):
    """diffusers' UNet of the file in bf16, channels_last, by diffusers' single-file conversion (from_single_file on
    the file's UNet tensors, read to bf16 one at a time: the text encoders and VAE are never loaded)."""
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open
    with safe_open(path, framework="pt") as file:
        tensors = {key: file.get_tensor(key).to(torch.bfloat16) for key in file.keys() if key.startswith("model.diffusion_model.")}
    unet = UNet2DConditionModel.from_single_file(tensors, config=str(DIFFUSERS_CONFIG), subfolder="unet",
                                                 torch_dtype=torch.bfloat16, local_files_only=True)
    del tensors
    return unet.eval().requires_grad_(False).to(memory_format=torch.channels_last)


@torch.no_grad()
def step_worker(which: str, path: str, size: int, steps: int, out: str) -> dict:
    """Load one UNet, run a warm-up step (its answer saved to `out`), then time `steps` steps."""
    x, t, context, pooled, time_ids, y = step_inputs(size)
    started = time.perf_counter()
    if which == "nodegraph":
        from nodegraph.sd import load_checkpoint
        unet = load_checkpoint(path, device="cpu", dtype=torch.bfloat16).unet  # the rest is dropped at once
        step = lambda: unet(x, t, context, y)  # noqa: E731
    else:
        unet = diffusers_unet(path)
        sample, hidden = x.bfloat16().to(memory_format=torch.channels_last), context.bfloat16()
        added = {"text_embeds": pooled.bfloat16(), "time_ids": time_ids}
        step = lambda: unet(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample  # noqa: E731
    load_s = time.perf_counter() - started
    drop_freed_memory()
    output = step().float()
    torch.save(output, out)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"step_s": times, "load_s": load_s, "threads": torch.get_num_threads(), "finite": bool(output.isfinite().all()),
            "output_std": output.std().item(), "rss_bytes": status_bytes("VmRSS")}


def worker(args: list[str]) -> None:
    kind, which, path = args[:3]
    if kind == "load":
        report = load_worker(which, path)
    else:
        report = step_worker(which, path, int(args[3]), int(args[4]), args[5])
    print(json.dumps(report))


# ---- the section ----

def run_worker(*args) -> dict:
    result = subprocess.run([sys.executable, "-m", "bench.sdxl", "--worker", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"bench.sdxl worker {args[:2]} failed:\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["load_average_1min"] = os.getloadavg()[0]  # above the thread count, something else shared the CPUs
    return report


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    matrix = [f for f in flags if f.startswith(("avx512_bf16", "amx"))]
    return f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}, model " \
           f"{fields.get('Model', '?').strip()}), {fields.get('CPU(s)', '?').strip()} CPUs, {' '.join(matrix) or 'no bf16 matrix units'}"


def summary(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "spread_s": max(samples) - min(samples),
            "runs": samples}


def bench_sdxl_load(path: Path, repeats: int) -> dict:
    runs = {"nodegraph": [], "diffusers": []}
    for _ in range(repeats):
        for which in runs:
            runs[which].append(run_worker("load", which, path))
    file_bytes = tensor_bytes(path)
    results = {"tensor_bytes": file_bytes,
               "diffusers_path": "StableDiffusionXLPipeline.from_single_file(path, config=<local folder>, "
                                 "torch_dtype=bfloat16, local_files_only=True)"}
    print(f"\nSDXL checkpoint load to bf16 ({file_bytes / 2**30:.2f} GiB of fp16 tensors), fresh process each")
    for which, samples in runs.items():
        peak = max(s["peak_rss_bytes"] for s in samples)
        results[which] = {**summary([s["seconds"] for s in samples]), "peak_rss_bytes": peak,
                          "peak_rss_over_tensor_bytes": peak / file_bytes,
                          "rss_after_imports_bytes": statistics.median(s["rss_after_imports_bytes"] for s in samples),
                          "rss_loaded_bytes": statistics.median(s["rss_loaded_bytes"] for s in samples),
                          "parameters": samples[0]["parameters"], "tensors_left_on_meta": max(s["on_meta"] for s in samples)}
        r = results[which]
        if r["tensors_left_on_meta"]:
            raise RuntimeError(f"{which} left {r['tensors_left_on_meta']} tensors unloaded (on the meta device)")
        print(f"  {which:<10} {r['median_s']:6.2f} s ±{r['spread_s']:.2f}   peak RSS {peak / 2**30:5.2f} GiB "
              f"= {r['peak_rss_over_tensor_bytes']:.2f}x tensor bytes (imports alone {r['rss_after_imports_bytes'] / 2**30:.2f} GiB), "
              f"{r['parameters'] / 1e9:.3f} G parameters")
    results["time_ratio"] = results["nodegraph"]["median_s"] / results["diffusers"]["median_s"]
    results["peak_rss_ratio"] = results["nodegraph"]["peak_rss_bytes"] / results["diffusers"]["peak_rss_bytes"]
    print(f"  nodegraph / diffusers: time {results['time_ratio']:.2f}x, peak RSS {results['peak_rss_ratio']:.2f}x")
    return results


def bench_sdxl_step(path: Path, repeats: int, size: int, steps: int = 2, target: float = 0.8) -> dict:
    runs = {"nodegraph": [], "diffusers": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            for which in runs:
                runs[which].append(run_worker("step", which, path, size, steps, Path(folder) / f"{which}.pt"))
        ours, theirs = (torch.load(Path(folder) / f"{w}.pt", weights_only=True) for w in runs)
    results = {"size": size, "latent": size // 8, "batch": 2, "dtype": "bfloat16",
               "diffusers_setup": "UNet2DConditionModel (single-file conversion), channels_last, default attention "
                                  "processor (AttnProcessor2_0: scaled_dot_product_attention)"}
    print(f"\nSDXL UNet step, CFG batch 2, {size}x{size} (latent {size // 8}x{size // 8}), bf16, "
          f"{repeats} fresh processes each x {steps} steps after a warm-up")
    for which, reports in runs.items():
        results[which] = {**summary([s for r in reports for s in r["step_s"]]),
                          "load_s": statistics.median(r["load_s"] for r in reports),
                          "threads": reports[0]["threads"], "finite": all(r["finite"] for r in reports),
                          "output_std": reports[0]["output_std"]}
        r = results[which]
        print(f"  {which:<10} median {r['median_s']:6.2f} s/step, fastest {r['min_s']:6.2f} ±{r['spread_s']:.2f}  "
              f"(output finite: {r['finite']}, std {r['output_std']:.3f})")
    ratio = results["nodegraph"]["median_s"] / results["diffusers"]["median_s"]
    results.update(ratio=ratio, ratio_of_fastest=results["nodegraph"]["min_s"] / results["diffusers"]["min_s"],
                   target_ratio=target, meets_target=ratio <= target, relative_difference=relative(ours, theirs),
                   load_averages=[r["load_average_1min"] for reports in runs.values() for r in reports])
    print(f"  nodegraph / diffusers: {ratio:.2f}x of medians, {results['ratio_of_fastest']:.2f}x of the fastest "
          f"(target <= {target})   relative difference of the two outputs: {results['relative_difference']:.2e}")
    if max(results["load_averages"]) > torch.get_num_threads() + 0.5:
        print(f"  (the CPUs were shared with other work during some runs: 1-minute load averages up to "
              f"{max(results['load_averages']):.1f})")
    return results


def bench_sdxl(repeats: int) -> dict:
    """The section: build the checkpoint and the diffusers config folder once, then load and step."""
    from bench.run import save
    path = sdxl_random_checkpoint()
    write_diffusers_config()
    print(f"\n{path} ({path.stat().st_size / 2**30:.2f} GiB), {cpu_model()}, load average {os.getloadavg()[0]:.1f}")
    data = {"checkpoint": str(path), "cpu_model": cpu_model(), "load_average_before": os.getloadavg(),
            "step": {str(size): bench_sdxl_step(path, repeats, size) for size in SIZES},
            "load": bench_sdxl_load(path, repeats)}
    data["load_average_after"] = os.getloadavg()
    save("sdxl", data)
    return data


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    elif len(sys.argv) >= 2 and sys.argv[1] == "--build":
        print(sdxl_random_checkpoint(), write_diffusers_config())
