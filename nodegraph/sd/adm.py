"""SDXL's "ADM" vector: the pooled text embedding followed by the image sizes it was trained to condition on.

Each number is embedded as a 256-wide sinusoidal timestep embedding ([cos, sin], as the UNet embeds its timestep)
and the embeddings are laid end to end after the pooled embedding, in the order ComfyUI's SDXL and SDXLRefiner
encode them (the order diffusers' `time_ids` use too). Sizes are in pixels (latent size x 8)."""

import torch

from .unet import timestep_embedding

SIZE_EMBEDDING = 256  # width of each number's embedding


def adm_vector(pooled: torch.Tensor, numbers: list[float]) -> torch.Tensor:
    """pooled [B,P] ++ the embeddings of `numbers` (the same for every row) -> float32 [B, P + 256*len(numbers)]."""
    if pooled.ndim != 2:
        raise ValueError(f"pooled must be [B, width], not {list(pooled.shape)}")
    values = torch.tensor([float(n) for n in numbers], dtype=torch.float32, device=pooled.device)
    sizes = timestep_embedding(values, SIZE_EMBEDDING).flatten()
    return torch.cat([pooled.float(), sizes.expand(pooled.shape[0], -1)], dim=1)


def sdxl_adm(pooled: torch.Tensor, height: float, width: float, crop_h: float, crop_w: float,
             target_height: float, target_width: float) -> torch.Tensor:
    """SDXL base: pooled [B,1280] -> [B,2816]. ComfyUI's defaults: the image size for both sizes, crops 0."""
    return adm_vector(pooled, [height, width, crop_h, crop_w, target_height, target_width])


def refiner_adm(pooled: torch.Tensor, height: float, width: float, crop_h: float, crop_w: float,
                aesthetic_score: float) -> torch.Tensor:
    """SDXL refiner: pooled [B,1280] -> [B,2560]. ComfyUI's aesthetic score defaults: 6 positive, 2.5 negative."""
    return adm_vector(pooled, [height, width, crop_h, crop_w, aesthetic_score])


# --- one cond's vector, as ComfyUI's sampler builds it ------------------------------------------------------------

LATENT_FACTOR = 8  # pixels per latent cell: the sizes' default is the latent's size times this (ComfyUI's 8)
POOLED_WIDTH = 1280  # bigG's projected pooled state: the first part of both SDXL vectors
ADM_SIZES = {"sdxl": 6, "refiner": 5}  # numbers embedded after the pooled state, by Family.adm
DEFAULT_AESTHETIC_SCORE = {False: 6.0, True: 2.5}  # ComfyUI's refiner defaults, by "is it the negative"


def adm_width(kind: str) -> int:
    """The UNet's label_emb input width for a Family.adm kind: 2816 (base), 2560 (refiner)."""
    return POOLED_WIDTH + SIZE_EMBEDDING * ADM_SIZES[kind]


def cond_adm(cond, kind: str, latent_height: int, latent_width: int, negative: bool = False) -> torch.Tensor:
    """The UNet's y for one Cond (nodegraph.sd.conditioning) of a family with an ADM (`kind`: "sdxl" or "refiner"):
    [B, 2816] or [B, 2560] float32, B the cond's batch. ComfyUI's defaults for what the cond leaves None
    (samplers.py encode_model_conds, model_base.py SDXL/SDXLRefiner.encode_adm): width and height the latent's size
    in pixels (the whole latent's, also for an area cond), crops 0, targets the cond's width and height, aesthetic
    score 6 for the positive and 2.5 for the `negative`. A cond without a pooled output (a plain context tensor)
    gets zeros there."""
    if kind not in ADM_SIZES:
        raise ValueError(f"unknown ADM kind {kind!r}: one of {', '.join(ADM_SIZES)}")
    pooled = cond.pooled
    if pooled is None:
        pooled = torch.zeros((cond.context.shape[0], POOLED_WIDTH))
    elif pooled.ndim != 2 or pooled.shape[1] != POOLED_WIDTH:
        raise ValueError(f"this SDXL model takes a {POOLED_WIDTH}-wide pooled text output, but the conditioning's is "
                         f"{list(pooled.shape)}: the prompt was encoded by another model family's CLIP")
    pick = lambda value, default: default if value is None else value  # noqa: E731
    width = pick(cond.width, latent_width * LATENT_FACTOR)
    height = pick(cond.height, latent_height * LATENT_FACTOR)
    crop_w, crop_h = pick(cond.crop_w, 0), pick(cond.crop_h, 0)
    if kind == "sdxl":
        return sdxl_adm(pooled, height, width, crop_h, crop_w, pick(cond.target_height, height),
                        pick(cond.target_width, width))
    score = pick(cond.aesthetic_score, DEFAULT_AESTHETIC_SCORE[bool(negative)])
    return refiner_adm(pooled, height, width, crop_h, crop_w, score)
