"""nodegraph against diffusers on the same weights, same device, dtype and thread count, in one process.

    python -m bench.run                         # everything (about 25 minutes on 2 CPU cores)
    python -m bench.run unet vae load executor   # some sections
    python -m bench.run --repeats 5 unet

Sections: unet, vae (decode and text encoding), bigvae, load, executor, txt2img (DDPM and dpmpp_2m karras), samplers
(each sampler's cost per step beyond its UNet calls, with a stand-in UNet that costs nothing), lora (applying a rank-32
LoRA and changing its strength, against diffusers' load_lora_weights + fuse_lora: bench/lora.py).

Runs alternate (ours, theirs, ours, ...) so drift in machine speed hits both alike. Prints a table (median and
spread = max - min) and writes bench/results/<section>.json.
"""

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.checkpoint import sd15_random_checkpoint, tensor_bytes

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def measure(candidates: dict, repeats: int, warmup: int = 1) -> dict:
    """Median and spread of each candidate's wall time, runs interleaved."""
    for _ in range(warmup):
        for run in candidates.values():
            run()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: {"median_s": statistics.median(t), "spread_s": max(t) - min(t), "runs": t} for name, t in times.items()}


def table(title: str, results: dict, baseline: str | None = None) -> None:
    print(f"\n{title}")
    for name, r in results.items():
        ratio = f"  {r['median_s'] / results[baseline]['median_s']:.2f}x {baseline}" if baseline and name != baseline else ""
        print(f"  {name:<34} {r['median_s'] * 1000:9.1f} ms  ±{r['spread_s'] * 1000:7.1f}{ratio}")


def save(section: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}
    (RESULTS / f"{section}.json").write_text(json.dumps(data, indent=2))


def models(path, dtype):
    from bench.reference import load_diffusers
    from nodegraph.sd import load_checkpoint

    return load_checkpoint(path, device="cpu", dtype=dtype), load_diffusers(path, dtype)


@torch.no_grad()
def bench_unet(path: Path, repeats: int) -> None:
    ours, (unet, _, _) = models(path, torch.bfloat16)
    fastest = unet.to(memory_format=torch.channels_last)  # diffusers' fastest CPU setup: bf16, channels_last, SDPA
    results = {}
    for size in (512, 256):
        x = torch.randn(2, 4, size // 8, size // 8, dtype=torch.bfloat16)
        t = torch.tensor([500, 500])
        context = torch.randn(2, 77, 768, dtype=torch.bfloat16)
        results[size] = measure({
            "nodegraph bf16": lambda: ours.unet(x, t, context),
            "diffusers bf16 channels_last": lambda: fastest(x.to(memory_format=torch.channels_last), t, context),
        }, repeats)
        table(f"UNet step, CFG batch 2, {size}x{size}", results[size], "diffusers bf16 channels_last")
    save("unet", {str(k): v for k, v in results.items()})


@torch.no_grad()
def bench_vae_and_text(path: Path, repeats: int) -> None:
    ours, (_, vae, text) = models(path, torch.bfloat16)
    vae = vae.to(memory_format=torch.channels_last)
    z = torch.randn(1, 4, 64, 64)
    decode = measure({"nodegraph bf16": lambda: ours.vae.decode(z),
                      "diffusers bf16 channels_last": lambda: vae.decode(z.to(torch.bfloat16)).sample.float()}, repeats)
    table("VAE decode 512x512", decode, "diffusers bf16 channels_last")
    prompts = ["a photograph of an astronaut riding a horse", ""]
    from bench.reference import reference_tokenizer
    reference_tokenizer = reference_tokenizer()
    encode = measure({
        "nodegraph bf16": lambda: ours.encode_prompt(prompts),
        "transformers bf16": lambda: text(reference_tokenizer(prompts, padding="max_length", max_length=77,
                                                              truncation=True, return_tensors="pt").input_ids)[0].float(),
    }, repeats * 3)
    table("text encoding, two prompts", encode, "transformers bf16")
    save("vae_text", {"vae_decode_512": decode, "text_encode_2": encode})


def load_worker(which: str, path: str) -> None:
    """Runs in a fresh process: load, then report time and peak resident memory."""
    started = time.perf_counter()
    if which == "nodegraph":
        from nodegraph.sd import load_checkpoint
        load_checkpoint(path, device="cpu", dtype=torch.bfloat16)
    else:
        from bench.reference import load_diffusers
        load_diffusers(Path(path), torch.bfloat16)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_rss()}))


def big_decode_worker(which: str, path: str, size: int, out: str) -> None:
    """Runs in a fresh process: decode one size x size picture in bf16, report time and the resident memory the
    decode added at its peak, and save the pixels for comparison."""
    from bench.reference import load_diffusers
    from nodegraph.sd import load_checkpoint

    latent = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    if which.startswith("nodegraph"):
        vae = load_checkpoint(path, device="cpu", dtype=torch.bfloat16).vae
        if which == "nodegraph whole":
            decode = lambda: vae.decoder(vae.post_quant_conv(latent.bfloat16())).float()  # noqa: E731
        else:
            decode = lambda: vae.decode(latent)  # noqa: E731
    else:
        vae = load_diffusers(Path(path), torch.bfloat16)[1].to(memory_format=torch.channels_last)
        if which == "diffusers tiled":
            vae.enable_tiling()
        decode = lambda: vae.decode(latent.bfloat16()).sample.float()  # noqa: E731
    import gc

    from nodegraph.sd.layers import give_back_freed_memory
    gc.collect()
    give_back_freed_memory()
    before = status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from here
    started = time.perf_counter()
    with torch.no_grad():
        pixels = decode()
    seconds = time.perf_counter() - started
    torch.save(pixels, out)
    print(json.dumps({"seconds": seconds, "added_peak_rss_bytes": peak_rss() - before}))


def status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is no such file or field."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":")), None)


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: a child started by fork+exec inherits its
    parent's maximum there, and the harness's parent process holds models by then."""
    peak = status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def baseline_rss() -> int:
    """Peak RSS of a process that imports what a loader imports and loads nothing."""
    code = "import torch, safetensors, transformers, bench.run as r; print(r.peak_rss())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout)


def bench_load(path: Path, repeats: int) -> None:
    file_bytes = tensor_bytes(path)
    runs = {"nodegraph": [], "diffusers": []}
    for _ in range(repeats):
        for which in runs:
            out = subprocess.run([sys.executable, "-m", "bench.run", "--load-worker", which, str(path)], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout
            runs[which].append(json.loads(out.strip().splitlines()[-1]))
    results = {}
    print(f"\ncheckpoint load to bf16 ({file_bytes / 2**30:.2f} GiB of fp16 tensors), fresh process each")
    for which, samples in runs.items():
        seconds = [s["seconds"] for s in samples]
        peak = max(s["peak_rss_bytes"] for s in samples)
        results[which] = {"median_s": statistics.median(seconds), "spread_s": max(seconds) - min(seconds),
                          "peak_rss_bytes": peak, "peak_rss_over_tensor_bytes": peak / file_bytes}
        print(f"  {which:<12} {results[which]['median_s']:6.2f} s ±{results[which]['spread_s']:.2f}   "
              f"peak RSS {peak / 2**30:.2f} GiB = {peak / file_bytes:.2f}x tensor bytes")
    results["tensor_bytes"] = file_bytes
    results["import_only_peak_rss_bytes"] = baseline_rss()
    print(f"  (a process that only imports torch/safetensors/transformers peaks at "
          f"{results['import_only_peak_rss_bytes'] / 2**30:.2f} GiB)")
    save("load", results)


def bench_big_decode(path: Path, size: int = 1024) -> None:
    """A big VAE decode: nodegraph's default (bands above 512x512) and whole, diffusers' whole and tiled
    (enable_tiling), each in a fresh process: time, memory the decode adds, and how far it is from a whole decode."""
    import tempfile
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        for which in ("nodegraph whole", "nodegraph bands", "diffusers whole", "diffusers tiled"):
            out = Path(folder) / f"{which}.pt"
            report = subprocess.run([sys.executable, "-m", "bench.run", "--big-decode-worker", which, str(path), str(size), str(out)],
                                    cwd=ROOT, capture_output=True, text=True, check=True).stdout
            runs[which] = json.loads(report.strip().splitlines()[-1])
            runs[which]["pixels"] = torch.load(out, weights_only=True)
    print(f"\nVAE decode {size}x{size}, bf16, fresh process each")
    for which, run in runs.items():
        whole = runs[which.split()[0] + " whole"]
        run["psnr_vs_whole_db"] = None if run is whole else psnr(run["pixels"], whole["pixels"])
        gap = "" if run is whole else f"   PSNR vs its whole decode {run['psnr_vs_whole_db']:.1f} dB"
        print(f"  {which:<16} {run['seconds']:7.1f} s   memory added at peak {run['added_peak_rss_bytes'] / 2**30:5.2f} GiB{gap}")
    for run in runs.values():
        del run["pixels"]
    save("big_decode", {"size": size, **runs})


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """On 8-bit pictures, as a user would compare them."""
    to_8bit = lambda x: ((x / 2 + 0.5).clamp(0, 1) * 255).round()  # noqa: E731
    mse = (to_8bit(image) - to_8bit(reference)).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}  # SD 1.x's training schedule


def diffusers_pipeline(path: Path, dtype: torch.dtype, scheduler, channels_last: bool = False):
    """diffusers' StableDiffusionPipeline over the checkpoint's weights in `dtype`, with `scheduler`."""
    from diffusers import StableDiffusionPipeline

    from bench.reference import load_diffusers, reference_tokenizer
    unet, vae, text = load_diffusers(path, dtype)
    if channels_last:  # with bf16, diffusers' fastest CPU setup (see bench_unet)
        unet, vae = unet.to(memory_format=torch.channels_last), vae.to(memory_format=torch.channels_last)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=reference_tokenizer(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def bench_txt2img(path: Path, repeats: int, steps: int = 20) -> None:
    """A whole 512x512 txt2img: nodegraph with default settings against diffusers' default (fp32) pipeline; then
    dpmpp_2m with karras sigmas against diffusers' DPMSolverMultistepScheduler alike, both in nodegraph's dtype, from
    the same starting noise, with the PSNR between the two pictures."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    from nodegraph.sd import load_checkpoint, sample
    from nodegraph.sd.sampling import initial_noise

    ours = load_checkpoint(path)  # dtype=None: bf16 on this CPU
    prompt, seed, pictures = "a photograph of an astronaut riding a horse", 1, {}

    def nodegraph_image(**sampler):
        latent = sample(ours, ours.encode_prompt([prompt]), ours.encode_prompt([""]), torch.zeros(1, 4, 64, 64),
                        seed=seed, steps=steps, cfg=7.5, **sampler)
        return ours.vae.decode(latent)  # [-1, 1]

    def diffusers_image(pipe, **options):
        images = pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, output_type="pt",
                      generator=torch.Generator("cpu").manual_seed(seed), **options).images
        return images.float() * 2 - 1  # from [0, 1]

    pipe = diffusers_pipeline(path, torch.float32, DDPMScheduler(**SD_BETAS, clip_sample=False, steps_offset=1,
                                                                 timestep_spacing="leading"))
    ddpm = measure({"nodegraph default (bf16)": nodegraph_image,
                    "diffusers default (fp32)": lambda: diffusers_image(pipe)}, repeats, warmup=0)
    table(f"txt2img 512x512, {steps} DDPM steps, CFG", ddpm, "diffusers default (fp32)")

    del pipe
    dtype = ours.dtype
    # steps_offset=1 only because the pipeline rewrites the config to it otherwise: unused with karras sigmas
    dpm_solver = DPMSolverMultistepScheduler(**SD_BETAS, use_karras_sigmas=True, algorithm_type="dpmsolver++",
                                             solver_order=2, steps_offset=1)
    pipe = diffusers_pipeline(path, dtype, dpm_solver, channels_last=dtype == torch.bfloat16)
    noise = initial_noise((1, 4, 64, 64), seed).to(dtype)  # nodegraph's start (diffusers' init_noise_sigma is 1)
    name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    ours_name, theirs_name = f"nodegraph dpmpp_2m {name}", f"diffusers DPMSolverMultistep {name}"

    def keep(key, run):
        return lambda: pictures.__setitem__(key, run())

    dpm = measure({ours_name: keep("ours", lambda: nodegraph_image(sampler_name="dpmpp_2m", scheduler="karras")),
                   theirs_name: keep("theirs", lambda: diffusers_image(pipe, latents=noise))}, repeats, warmup=0)
    layout = " (diffusers channels_last)" if dtype == torch.bfloat16 else ""
    table(f"txt2img 512x512, {steps} dpmpp_2m steps, karras sigmas, CFG, both {name}{layout}", dpm, theirs_name)
    dpm["psnr_db"] = psnr(pictures["ours"], pictures["theirs"])
    print(f"  PSNR between the two pictures: {dpm['psnr_db']:.1f} dB (same weights, same solver, same noise)")
    save("txt2img", {"ddpm": ddpm, "dpmpp_2m_karras": dpm})


def bench_executor(repeats: int) -> None:
    """Executor overhead: wall time of a run minus the time spent inside nodes, on the demo checkpoint."""
    import tempfile

    from nodegraph.executor import Executed, Executing, Executor
    from nodegraph.nodes import Environment
    from nodegraph.workflow import read_workflow_file

    workflow = read_workflow_file(ROOT / "workflows" / "txt2img.json")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        executor = Executor(Environment(models_dir=folder / "models", input_dir=folder / "input",
                                        output_dir=folder / "output", temp_dir=folder / "temp"))
        node_time = {"started": {}, "total": 0.0}

        def on_event(event):
            if isinstance(event, Executing):
                node_time["started"][event.node_id] = time.perf_counter()
            elif isinstance(event, Executed):
                node_time["total"] += time.perf_counter() - node_time["started"].pop(event.node_id)

        def overhead(seed):
            workflow["nodes"]["sample"]["inputs"]["seed"] = seed
            node_time["total"] = 0.0
            started = time.perf_counter()
            executor.run(workflow, on_event=on_event)
            return time.perf_counter() - started - node_time["total"]

        overhead(0)
        new_seed = [overhead(seed) for seed in range(1, repeats * 3 + 1)]
        cached = [overhead(repeats * 3) for _ in range(repeats * 3)]
    results = {name: {"median_s": statistics.median(v), "spread_s": max(v) - min(v), "runs": v}
               for name, v in (("seed-only re-run", new_seed), ("fully cached re-run", cached))}
    table("executor overhead beyond model compute (txt2img workflow)", results)
    save("executor", results)


class StandInUNet:
    """A UNet that costs next to nothing: the same precomputed noise prediction at every call, in the dtype the real
    one answers in; it counts its calls and the time spent inside them. With `hold_s` each call also waits that long
    without using the CPU, as a call into a GPU does: what a sampler computes meanwhile on other threads is hidden."""

    def __init__(self, output: torch.Tensor, hold_s: float = 0.0):
        self.output, self.hold_s, self.calls, self.seconds = output, hold_s, 0, 0.0

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        if x.shape != self.output.shape:
            raise ValueError(f"stand-in UNet built for {tuple(self.output.shape)}, called with {tuple(x.shape)}")
        if self.hold_s:
            time.sleep(self.hold_s)
        self.calls += 1
        self.seconds += time.perf_counter() - started
        return self.output


def sampler_overheads(hold_s: float, runs: int, size: int, steps: int, scheduler: str) -> dict:
    """Per sampler: UNet calls per step, and the median (and spread) of the ms per step spent outside the UNet."""
    from nodegraph.device import pick_dtype
    from nodegraph.sd import StableDiffusion
    from nodegraph.sd.sampling import SAMPLER_NAMES, sample_ksampler

    cpu = torch.device("cpu")
    dtype = pick_dtype(cpu)  # what the real UNet would answer in
    output = torch.randn(2, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    unet = StandInUNet(output, hold_s)
    sd = StableDiffusion(tokenizer=None, text_encoders={}, unet=unet, vae=None, device=cpu, dtype=dtype)
    positive, negative = torch.randn(1, 77, 768), torch.randn(1, 77, 768)
    latent = torch.zeros(1, 4, size // 8, size // 8)
    inside = {name: [] for name in SAMPLER_NAMES}  # (calls, seconds in the UNet) of each run, warm-up included

    def run(name):
        def sample_once():
            unet.calls, unet.seconds = 0, 0.0
            sample_ksampler(sd, positive, negative, latent, seed=1, steps=steps, cfg=7.5, sampler_name=name,
                            scheduler=scheduler)
            inside[name].append((unet.calls, unet.seconds))
        return sample_once

    # One sampler at a time, not interleaved: the SDE samplers' noise worker leaves the CPU's thread pools busy for a
    # moment after a run, which would be charged to whichever sampler runs next.
    warmup = 1
    timed = {name: measure({name: run(name)}, runs, warmup)[name] for name in SAMPLER_NAMES}
    results = {}
    for name in SAMPLER_NAMES:
        done = inside[name][warmup:]
        per_step = [(wall - seconds) / steps * 1000 for wall, (_, seconds) in zip(timed[name]["runs"], done)]
        results[name] = {"unet_calls_per_step": done[0][0] / steps, "overhead_ms_per_step": statistics.median(per_step),
                         "spread_ms": max(per_step) - min(per_step), "runs_ms_per_step": per_step}
    return results


@torch.no_grad()
def bench_samplers(repeats: int, size: int = 512, steps: int = 20, scheduler: str = "karras",
                   target_ms: float = 1.0, hold_ms: float = 30.0) -> None:
    """Each sampler's own cost per step: a whole KSampler run (sigmas, noise, guidance, steps, the way back to a raw
    latent) on a StableDiffusion with the real schedule and a stand-in UNet, less the time inside the UNet, per step.
    CFG, so the UNet sees batch 2. Twice: with a UNet that answers at once (all the sampler's CPU time shows), and
    with one that holds each call hold_ms without using the CPU, as a GPU does (work on other threads overlaps)."""
    from nodegraph.sd.sampling import SAMPLER_NAMES

    instant = sampler_overheads(0.0, repeats * 5, size, steps, scheduler)
    held = sampler_overheads(hold_ms / 1000, max(repeats, 3), size, steps, scheduler)
    print(f"\nsampler cost per step beyond the UNet calls, {size}x{size} (latent {size // 8}x{size // 8}, batch 1, "
          f"CFG), {scheduler}, {steps} steps; target <= {target_ms:g} ms")
    print(f"  {'sampler':<20} {'UNet calls/step':>15} {'UNet at once':>13} {'spread':>7} "
          f"{f'UNet holds {hold_ms:g} ms':>17} {'spread':>7}")
    # After each held call the CPU's thread pool wakes up again, which costs the same whatever the sampler: euler,
    # the plainest rule, measures it per UNet call; a sampler's own cost under a GPU-like UNet is what it adds to that.
    per_call = held["euler"]["overhead_ms_per_step"] / held["euler"]["unet_calls_per_step"]
    for name in SAMPLER_NAMES:
        a, b = instant[name], held[name]
        a["meets_target"] = a["overhead_ms_per_step"] <= target_ms
        b["beyond_euler_ms_per_step"] = b["overhead_ms_per_step"] - per_call * b["unet_calls_per_step"]
        b["meets_target"] = b["beyond_euler_ms_per_step"] <= target_ms
        verdict = "ok" if a["meets_target"] else "hidden behind the UNet" if b["meets_target"] else "OVER"
        print(f"  {name:<20} {a['unet_calls_per_step']:15.2f} {a['overhead_ms_per_step']:10.3f} ms {a['spread_ms']:7.3f} "
              f"{b['overhead_ms_per_step']:14.3f} ms {b['spread_ms']:7.3f}   {verdict}")
    save("samplers", {"size": size, "steps": steps, "scheduler": scheduler, "target_ms_per_step": target_ms,
                      "hold_ms": hold_ms, "unet_at_once": instant, "unet_holds": held})


SECTIONS = ["unet", "vae", "bigvae", "load", "executor", "txt2img", "samplers", "lora", "sdxl"]


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--load-worker":
        return load_worker(sys.argv[2], sys.argv[3])
    if len(sys.argv) >= 2 and sys.argv[1] == "--big-decode-worker":
        return big_decode_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    if len(sys.argv) >= 2 and sys.argv[1] == "--lora-worker":
        from bench.lora import lora_worker
        return lora_worker(*sys.argv[2:6])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", choices=SECTIONS + [[]], default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.sections or SECTIONS
    path = sd15_random_checkpoint()
    print(f"{path} ({path.stat().st_size / 2**30:.2f} GiB), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if "unet" in sections:
        bench_unet(path, args.repeats)
    if "vae" in sections:
        bench_vae_and_text(path, args.repeats)
    if "bigvae" in sections:
        bench_big_decode(path)
    if "load" in sections:
        bench_load(path, args.repeats)
    if "executor" in sections:
        bench_executor(args.repeats)
    if "txt2img" in sections:
        bench_txt2img(path, max(1, args.repeats // 3))
    if "samplers" in sections:
        bench_samplers(args.repeats)
    if "lora" in sections:
        from bench.lora import bench_lora
        bench_lora(path, max(1, args.repeats // 2))
    if "sdxl" in sections:
        from bench.sdxl import bench_sdxl
        bench_sdxl(args.repeats)


if __name__ == "__main__":
    main()
