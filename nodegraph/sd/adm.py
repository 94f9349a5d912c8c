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
