"""DDPM sampling (Ho et al. 2020) as SD 1.x ships it (and for SD 2.x's v-prediction and SDXL's UNets on the same
training schedule). Three separate pieces, so other samplers can reuse the first
two: the noise schedule, the list of timesteps, and the update step."""

from collections.abc import Callable

import torch

from .adm import cond_adm
from .conditioning import Conditioning, as_conditioning
from .sampling.guidance import combine_regions, common_token_length, is_plain
from .sampling.ksampler import model_adm
from .sampling.regions import RegionPlan
from .sampling.schedule import DiscreteSchedule

TRAIN_STEPS = 1000


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = TRAIN_STEPS) -> torch.Tensor:
    """SD's training schedule: betas linear in sqrt space, then the cumulative product of (1 - beta)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def leading_timesteps(steps: int, offset: int = 1, train_steps: int = TRAIN_STEPS) -> list[int]:
    """'leading' spacing with SD's offset of 1: 50 steps give 981, 961, ..., 1."""
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be between 1 and {train_steps}, got {steps}")
    ratio = train_steps // steps
    return [i * ratio + offset for i in reversed(range(steps))]


def kept_timesteps(steps: int, denoise: float) -> list[int]:
    """The timesteps a partial denoise runs: the last int(steps * denoise) of the full list (diffusers' strength)."""
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    kept = min(int(steps * denoise), steps)
    if kept == 0:
        raise ValueError(f"denoise {denoise} with {steps} steps runs no step: raise steps or denoise (steps * denoise >= 1)")
    return leading_timesteps(steps)[steps - kept :]


def ddpm_step(
    x: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, alphas_cumprod: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """One step of the DDPM posterior q(x_{t_prev} | x_t, x0) with the fixed-small variance; t_prev < 0 means the end."""
    a_t = alphas_cumprod[t]
    a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else alphas_cumprod.new_tensor(1.0)
    alpha = a_t / a_prev
    beta = 1.0 - alpha
    x0 = (x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
    mean = (a_prev.sqrt() * beta / (1.0 - a_t)) * x0 + (alpha.sqrt() * (1.0 - a_prev) / (1.0 - a_t)) * x
    variance = torch.clamp((1.0 - a_prev) / (1.0 - a_t) * beta, min=1e-20)
    return mean + variance.sqrt() * noise


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a_t = alphas_cumprod[t]
    return a_t.sqrt() * x0 + (1.0 - a_t).sqrt() * noise


def guided_eps(unet, x: torch.Tensor, t: int, positive: torch.Tensor, negative: torch.Tensor,
               cfg: float, y: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Classifier-free guidance: one UNet call on [negative, positive]; cfg <= 1 skips the negative entirely.
    `y`: the (positive, negative) ADM vectors of an SDXL UNet."""
    batch = x.shape[0]
    expand = lambda tensor: tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor  # noqa: E731
    extra = {}
    if cfg <= 1.0:
        if y is not None:
            extra["y"] = expand(y[0])
        return unet(x, t, expand(positive), **extra).float()
    if y is not None:
        extra["y"] = torch.cat([expand(y[1]), expand(y[0])])
    eps_negative, eps_positive = unet(torch.cat([x, x]), t, torch.cat([expand(negative), expand(positive)]),
                                      **extra).float().chunk(2)
    return eps_negative + cfg * (eps_positive - eps_negative)


def whole_latent_only(conditioning, what: str) -> Conditioning:
    """CONDITIONING for DDPM sampling: conds over the whole latent only (areas and masks are KSampler's)."""
    conds = as_conditioning(conditioning, what)
    if not all(c.is_everywhere for c in conds):
        raise ValueError(f"DDPM sampling takes {what} conditioning over the whole latent, but it has an area or a "
                         "mask (ConditioningSetArea / ConditioningSetMask): sample it with KSampler instead")
    return conds


def guidance(unet, positive: Conditioning, negative: Conditioning, cfg: float, shape, device,
             adm: str | None = None) -> Callable:
    """(x, t) -> the guided model output. One cond per side takes guided_eps; several (ConditioningCombine)
    average their predictions weighted by strength, as KSampler does, then guide. `adm`: the family's ADM kind
    (SDXL's UNets take each cond's size conditioning as y)."""
    if is_plain(positive) and is_plain(negative):
        contexts = positive[0].context.to(device), negative[0].context.to(device)
        if cfg > 1.0 and contexts[0].shape[1] != contexts[1].shape[1]:
            contexts = common_token_length(*contexts)
        y = None if adm is None else tuple(
            cond_adm(side[0], adm, shape[-2], shape[-1], negative=is_negative).to(device)
            for side, is_negative in ((positive, False), (negative, True)))
        return lambda x, t: guided_eps(unet, x, t, *contexts, cfg, y)
    plan = RegionPlan.build((positive, negative), shape, device, evaluated=(True, cfg > 1.0), adm=adm)

    def guided(x: torch.Tensor, t: int) -> torch.Tensor:
        eps_positive, eps_negative = combine_regions(
            plan, x, lambda crops, context, _, **y: unet(crops, t, context, **y).float())
        return eps_positive if cfg <= 1.0 else eps_negative + cfg * (eps_positive - eps_negative)

    return guided


def eps_reader(schedule) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(model output, x_t, alpha-bar at t) -> the predicted noise, for the model types DDPM sampling takes: eps models
    and v-prediction models (SD 2.x 768-v: eps = sqrt(a) v + sqrt(1 - a) x_t), on SD's training betas."""
    default = DiscreteSchedule(prediction=schedule.prediction)
    if schedule.prediction not in ("eps", "v") or schedule != default:
        raise ValueError(f"DDPM sampling runs eps and v-prediction models on SD's training schedule; this model's is "
                         f"{schedule.prediction!r}{' with zero terminal SNR' if schedule.zsnr else ''} "
                         "(ModelSamplingDiscrete): sample it with KSampler")
    if schedule.prediction == "v":
        return lambda output, x, a_t: a_t.sqrt() * output + (1.0 - a_t).sqrt() * x
    return lambda output, x, a_t: output


StepCallback = Callable[[int, int, torch.Tensor], None]


@torch.no_grad()
def sample(
    sd,
    positive,
    negative,
    latent: torch.Tensor,
    seed: int,
    steps: int = 20,
    cfg: float = 7.5,
    denoise: float = 1.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Sample a raw (unscaled) VAE latent with DDPM and classifier-free guidance.

    `positive` and `negative` are CONDITIONING over the whole latent (or context tensors [B, T, C]). `latent` gives
    the shape and, for denoise < 1, the starting picture: it is noised to the first kept timestep.
    Every random number comes from a CPU generator seeded with `seed`, in diffusers' order (the initial noise, then
    one tensor per step), so one seed gives one image on any device. `callback(step, total, x)` runs after each step;
    an exception raised there stops sampling. Returns float32 on the CPU.
    """
    device = sd.device
    read_eps = eps_reader(getattr(sd, "schedule", DiscreteSchedule()))
    guided_output = guidance(sd.unet, whole_latent_only(positive, "positive"), whole_latent_only(negative, "negative"),
                             cfg, latent.shape, device, model_adm(sd))
    generator = torch.Generator("cpu").manual_seed(int(seed))

    def randn() -> torch.Tensor:
        return torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(device)

    alphas_cumprod = scaled_linear_alphas_cumprod().to(device)
    timesteps = kept_timesteps(steps, denoise)
    if denoise < 1.0:
        x = add_noise(latent.to(device, torch.float32) * sd.latent_scale, randn(), timesteps[0], alphas_cumprod)
    else:
        x = randn()
    ratio = TRAIN_STEPS // steps
    for i, t in enumerate(timesteps):
        eps = read_eps(guided_output(x, t), x, alphas_cumprod[t])
        x = ddpm_step(x, eps, t, t - ratio, alphas_cumprod, randn())
        if callback is not None:
            callback(i + 1, len(timesteps), x)
    return (x / sd.latent_scale).cpu()
