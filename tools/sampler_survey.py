"""Which sampler, scheduler and step count give the demo checkpoint its best pictures for the least time?

    OMP_NUM_THREADS=1 python tools/sampler_survey.py     # the default candidates: about 5 minutes on one core
    python tools/sampler_survey.py --samplers euler dpmpp_2m --schedulers karras --steps 10 20 --extra-cfg

Each setting draws tests/test_demo.py's 24 prompts with the same seeds (prompt i, seed i) and scores the pictures
with its classifier (tools/demo_quality.py): how many show the prompted colour, background and shape. The
baseline is today's default, DDPMSample at 30 steps, cfg 7.5 (68/72 right: 24, 24, 20).

1. Screen: every sampler x scheduler x steps at --cfg, then the settings that came within --near of the baseline
   again at each --extra-cfg. Settings with as many model evaluations as the baseline or more (30 steps; heun
   and dpmpp_sde from 20) are skipped: they cannot be the cheaper winner (--max-evals 0 screens them too). To be
   fast, the 24 pictures of a setting are sampled as one batch, each with its own seed's noise (its initial
   noise, its step noise or its Brownian tree are exactly those of the picture sampled alone).
   The first prompt is also sampled alone, through nodegraph.sd.sample, for its time ("s/image") and as a check
   ("batch": its largest latent difference). Batched and alone pictures agree to ~1e-4, except where a sampler
   is chaotic on this model (lcm): there the batch's rounding can change a picture, not the statistics.
2. Confirm: the --confirm cheapest screened settings within --near of the baseline (by evaluations, then score)
   are sampled alone, exactly as test_demo samples, on the 24 seeds and on 24 fresh ones (seed 24 + i for prompt
   i), and so is the baseline on the fresh seeds; their time per picture is the mean of those 48.
3. The winner: the confirmed setting with the fewest evaluations whose 48 pictures are read right at least as
   often as the baseline's 48 (all three properties together), each property on each seed set at or above
   test_demo's bar (colour and background 90%, shape 75%).

The confirmation also runs test_demo's img2img case (a red circle 6 px off centre, denoise 0.6, "a blue circle on
a white background") with seeds 0-7, for information: how many come out blue on white within 4 px of where the
circle was ("img2img ok"), and how far the circle moved on average ("drift px"). It does not decide the winner.

"evals" counts UNet calls per picture (one call holds the prompt and the negative prompt): exact, where the wall
time is noisy while the CPU is shared.
"""

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodegraph.sd import load_checkpoint, sample  # noqa: E402
from nodegraph.sd.sampling import (SAMPLER_NAMES, SCHEDULER_NAMES, GuidedDenoiser, SamplerContext,  # noqa: E402
                                   get_sampler, initial_noise, ksampler_sigmas, step_noise)
from nodegraph.sd.sampling.noise import brownian_noise  # noqa: E402
import numpy as np  # noqa: E402

from tools.demo_quality import DEMO, PROMPTS, classify, draw, generate, prompt_text, to_pixels  # noqa: E402

# ddim is left out: ComfyUI's ddim is euler's step rule (they differ only in inpainting noise), the same pictures.
DEFAULT_SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "uni_pc", "lcm"]
DEFAULT_SCHEDULERS = ["karras", "normal"]
DEFAULT_STEPS = [10, 15, 20, 30]
BASELINE = {"steps": 30, "cfg": 7.5}  # DDPMSample: the seed workflows' and test_demo's default
KEYS = ("colour", "background", "shape")
BAR = {"colour": 0.9, "background": 0.9, "shape": 0.75}  # test_demo's thresholds
FRESH = len(PROMPTS)  # the confirmation's second seed set: prompt i with seed FRESH + i
IMG2IMG_SEEDS = range(8)  # test_demo's img2img case (seed 3 there) with these seeds


@dataclass
class Row:
    sampler: str  # "DDPMSample" for the baseline
    scheduler: str
    steps: int
    cfg: float
    evals: int
    right: dict  # key -> pictures read right, of len(PROMPTS)
    seconds: float  # per picture, sampled alone
    batch_error: float | None = None  # |batched - alone| latent difference of the timed prompt
    fresh: dict = field(default_factory=dict)  # the confirmation's counts on the fresh seeds
    img2img: tuple[int, float] | None = None  # test_demo's img2img case: seeds that pass, mean drift in pixels

    @property
    def total(self) -> int:
        return sum(self.right.values())

    @property
    def settings(self) -> dict:
        if self.sampler == "DDPMSample":
            return {"steps": self.steps, "cfg": self.cfg}
        return {"sampler_name": self.sampler, "scheduler": self.scheduler, "steps": self.steps, "cfg": self.cfg}


class PerItemSeeds(SamplerContext):
    """A sampler context for a batch whose item k has its own seed: each item's step noise or Brownian path is the
    one it would get sampled alone with that seed."""

    def __init__(self, schedule, seeds):
        super().__init__(schedule, seed=None)
        self.seeds = list(seeds)

    def step_noise(self, x):
        parts = [step_noise(x[k:k + 1], seed) for k, seed in enumerate(self.seeds)]
        return lambda sigma, sigma_next: torch.cat([part(sigma, sigma_next) for part in parts])

    def brownian_noise(self, x, sigmas):
        parts = [brownian_noise(x[k:k + 1], sigmas, seed) for k, seed in enumerate(self.seeds)]
        return lambda sigma, sigma_next: torch.cat([part(sigma, sigma_next) for part in parts])


@torch.no_grad()
def ksampler_batch(sd, positives, negative, seeds, *, sampler_name, scheduler, steps, cfg) -> torch.Tensor:
    """KSampler's text-to-image (denoise 1) for a batch of prompts, item k seeded seeds[k] as if sampled alone;
    raw VAE latents."""
    sampler = get_sampler(sampler_name)
    sigmas = ksampler_sigmas(sd.schedule, scheduler, steps, 1.0, sampler.discards_penultimate_sigma).to(sd.device)
    noise = torch.cat([initial_noise((1, 4, 8, 8), seed) for seed in seeds]).to(sd.device)
    x = sd.schedule.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), sd.schedule.is_max_denoise(sigmas[0]))
    model = GuidedDenoiser(sd.unet, sd.schedule, positives.to(sd.device), negative.to(sd.device), cfg)
    x = sampler.step(model, x, sigmas, PerItemSeeds(sd.schedule, seeds))
    return (x.float() / sd.latent_scale).cpu()


def count_evals(sd, *, sampler_name, scheduler, steps, cfg) -> int:
    """Model evaluations per picture, counted on a stand-in model (every estimate 0) so nothing is computed."""
    sampler = get_sampler(sampler_name)
    sigmas = ksampler_sigmas(sd.schedule, scheduler, steps, 1.0, sampler.discards_penultimate_sigma)
    calls = [0]

    def stand_in(x, sigma):
        calls[0] += 1
        return torch.zeros_like(x)

    sampler.step(stand_in, torch.randn(1, 4, 8, 8) * sigmas[0], sigmas, SamplerContext(sd.schedule, seed=0))
    return calls[0]


def count_right(sd, latents) -> dict:
    right = dict.fromkeys(KEYS, 0)
    for (colour, shape, background), pixels in zip(PROMPTS, to_pixels(sd, latents)):
        seen = classify(pixels)
        for key, want in zip(KEYS, (colour, background, shape)):
            right[key] += seen[key] == want
    return right


def alone(sd, positives, negative, first_seed, settings, count=None) -> tuple[torch.Tensor, float]:
    """The first `count` prompts (all by default) sampled one by one with seeds first_seed + i, as test_demo does:
    their raw latents and the mean seconds per picture (sampling and decoding)."""
    latents, seconds = [], 0.0
    for i in range(len(PROMPTS) if count is None else count):
        start = time.perf_counter()
        latent = sample(sd, positives[i:i + 1], negative, torch.zeros(1, 4, 8, 8), seed=first_seed + i, **settings)
        to_pixels(sd, latent)
        seconds += time.perf_counter() - start
        latents.append(latent)
    return torch.cat(latents), seconds / max(len(latents), 1)


def img2img_check(sd, settings) -> tuple[int, float]:
    """test_demo's img2img case with each of IMG2IMG_SEEDS: a red circle 6 px left of the centre, denoise 0.6,
    "a blue circle on a white background". Passes: blue, white, its centre within 4 px of where it was. Returns
    how many seeds pass and the mean distance moved."""
    red_circle = np.roll(draw((220, 30, 30), "circle", (255, 255, 255)), shift=(0, -6), axis=(0, 1))
    latent = sd.vae.encode(torch.from_numpy(red_circle.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1)
    centre = lambda mask: np.array(np.nonzero(mask)).mean(axis=1)  # noqa: E731
    before, passed, moved = classify(red_circle), 0, []
    for seed in IMG2IMG_SEEDS:
        after = classify(generate(sd, "a blue circle on a white background", seed, latent=latent, denoise=0.6,
                                  **settings))
        moved.append(float(np.linalg.norm(centre(after["foreground"]) - centre(before["foreground"])))
                     if after["foreground"].any() else float("inf"))
        passed += after["colour"] == "blue" and after["background"] == "white" and moved[-1] < 4
    return passed, float(np.mean(moved))


class Survey:
    def __init__(self, sd, log):
        self.sd, self.log = sd, log
        self.negative = sd.encode_prompt([""])
        self.positives = torch.cat([sd.encode_prompt([prompt_text(*p)]) for p in PROMPTS])
        self.seeds = list(range(len(PROMPTS)))

    def baseline(self) -> Row:
        latents, seconds = alone(self.sd, self.positives, self.negative, 0, BASELINE)
        row = Row("DDPMSample", "-", BASELINE["steps"], BASELINE["cfg"], BASELINE["steps"],
                  count_right(self.sd, latents), seconds)
        self.log(f"baseline: {row.right} ({seconds:.2f} s/image)")
        return row

    def screen(self, sampler_name, scheduler, steps, cfg, max_evals) -> Row | None:
        settings = dict(sampler_name=sampler_name, scheduler=scheduler, steps=steps, cfg=cfg)
        evals = count_evals(self.sd, **settings)
        if max_evals and evals > max_evals:
            self.log(f"skipped {settings}: {evals} evals > {max_evals}")
            return None
        latents = ksampler_batch(self.sd, self.positives, self.negative, self.seeds, **settings)
        timed, seconds = alone(self.sd, self.positives, self.negative, 0, settings, count=1)
        row = Row(sampler_name, scheduler, steps, cfg, evals, count_right(self.sd, latents), seconds,
                  float((timed[0] - latents[0]).abs().max()))
        self.log(f"{settings}: {row.right} ({row.total}), {evals} evals, {seconds:.2f} s/image, "
                 f"batch error {row.batch_error:.1e}")
        return row

    def confirm(self, row: Row, resample: bool = True) -> Row:
        """The row sampled alone on the 24 seeds (unless resample is False: the baseline's already are) and on the
        fresh ones."""
        confirmed = Row(**{**row.__dict__, "batch_error": None})
        fresh, seconds_fresh = alone(self.sd, self.positives, self.negative, FRESH, row.settings)
        confirmed.fresh = count_right(self.sd, fresh)
        confirmed.img2img = img2img_check(self.sd, row.settings)
        if resample:
            latents, seconds = alone(self.sd, self.positives, self.negative, 0, row.settings)
            confirmed.right = count_right(self.sd, latents)
            confirmed.seconds = (seconds + seconds_fresh) / 2
        self.log(f"confirmed {row.settings}: {confirmed.right} and {confirmed.fresh} on fresh seeds, img2img "
                 f"{confirmed.img2img}")
        return confirmed


def near(row: Row, baseline: Row, margin: int) -> bool:
    return row.total >= baseline.total - margin


def meets_bar(counts: dict) -> bool:
    return all(counts[key] >= BAR[key] * len(PROMPTS) for key in KEYS)


def wins(row: Row, baseline: Row) -> bool:
    return (sum(row.right.values()) + sum(row.fresh.values()) >= sum(baseline.right.values())
            + sum(baseline.fresh.values()) and meets_bar(row.right) and meets_bar(row.fresh))


def table(rows: list[Row], baseline: Row, confirmed: bool = False) -> str:
    n = len(PROMPTS)
    head = ["sampler", "scheduler", "steps", "cfg", "evals", "colour", "background", "shape", f"all /{3 * n}"]
    head += ([f"fresh seeds /{3 * n}", f"both /{6 * n}", "s/image", ">= default",
              f"img2img ok /{len(IMG2IMG_SEEDS)}", "drift px"] if confirmed
             else ["s/image", "batch"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.sampler, row.scheduler, row.steps, f"{row.cfg:g}", row.evals,
                 *(f"{row.right[key]}/{n}" for key in KEYS), row.total]
        if confirmed:
            fresh = sum(row.fresh.values())
            verdict = "default" if row is baseline else "yes" if wins(row, baseline) else "no"
            cells += [fresh, row.total + fresh, f"{row.seconds:.2f}", verdict, row.img2img[0], f"{row.img2img[1]:.1f}"]
        else:
            cells += [f"{row.seconds:.2f}", "-" if row.batch_error is None else f"{row.batch_error:.0e}"]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS, choices=SAMPLER_NAMES, metavar="NAME")
    parser.add_argument("--schedulers", nargs="+", default=DEFAULT_SCHEDULERS, choices=SCHEDULER_NAMES,
                        metavar="NAME")
    parser.add_argument("--steps", nargs="+", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--cfg", type=float, default=7.5, help="the screen's guidance scale")
    parser.add_argument("--extra-cfg", nargs="*", type=float, default=[5.0],
                        help="guidance scales to screen the near settings again at (none: skip)")
    parser.add_argument("--near", type=int, default=3,
                        help="how many fewer pictures read right than the baseline count as near (default 3)")
    parser.add_argument("--confirm", type=int, default=3, help="how many of the cheapest near settings to confirm")
    parser.add_argument("--max-evals", type=int, default=BASELINE["steps"] - 1,
                        help="skip settings with more model evaluations per picture (default 29: fewer than the "
                             "baseline's 30, as the winner must be cheaper; 0: no limit)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, which follows OMP_NUM_THREADS)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    start = time.perf_counter()
    survey = Survey(load_checkpoint(DEMO, device="cpu", dtype=torch.float32), log)
    baseline = survey.baseline()
    rows = [row for sampler_name in args.samplers for scheduler in args.schedulers for steps in args.steps
            if (row := survey.screen(sampler_name, scheduler, steps, args.cfg, args.max_evals)) is not None]
    for cfg in args.extra_cfg:
        rows += [row for again in [r for r in rows if r.cfg == args.cfg and near(r, baseline, args.near)]
                 if (row := survey.screen(again.sampler, again.scheduler, again.steps, cfg, args.max_evals))]

    print(f"## Screen: {len(PROMPTS)} prompts, seeds 0-{len(PROMPTS) - 1}, batched\n")
    print(table([baseline] + rows, baseline))

    chosen = sorted((r for r in rows if near(r, baseline, args.near)), key=lambda r: (r.evals, -r.total))
    baseline = survey.confirm(baseline, resample=False)
    confirmed = [survey.confirm(row) for row in chosen[:args.confirm]]
    print(f"\n## Confirm: each picture alone, seeds 0-{len(PROMPTS) - 1} and {FRESH}-{FRESH + len(PROMPTS) - 1}\n")
    print(table([baseline] + confirmed, baseline, confirmed=True))

    winners = [row for row in confirmed if wins(row, baseline)]
    if winners:
        best = winners[0]
        print(f"\nwinner: {best.sampler} / {best.scheduler}, {best.steps} steps, cfg {best.cfg:g}: {best.evals} evals "
              f"per picture vs the default's {baseline.evals}; {best.total + sum(best.fresh.values())}/"
              f"{6 * len(PROMPTS)} read right vs {baseline.total + sum(baseline.fresh.values())}")
    else:
        print("\nno confirmed setting is as good as the default: keep DDPMSample 30 steps")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
