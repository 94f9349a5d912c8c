"""Which model family a single-file checkpoint holds, told from its keys and shapes, as ComfyUI tells it.

A family says where each part sits in the file, how its text encoders are read (ComfyUI's clip options: the layer,
whether the final layer norm follows it, the padding token), what the UNet's shapes cannot tell (its heads), the
latent scale, the UNet's extra "ADM" input, and the prediction type. Files of families we do not run (SD3, Flux,
Stable Cascade, ...) are refused naming what gives them away.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import torch

from .tokenizer import EOS

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# ComfyUI's test for SD 2.x v-prediction files (supported_models.py SD20.model_type): a 768-v model's late
# transformer norm biases spread wider than a 512 eps model's. Inpainting (9-channel) SD 2.x models are eps.
V_PREDICTION_PROBE = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PREDICTION_STD = 0.09


@dataclass(frozen=True)
class TextRecipe:
    """One text encoder of a family and how prompts are read from it (ComfyUI's SDClipModel options)."""

    name: str  # ComfyUI's: "clip_l", "clip_h", "clip_g" (embedding files' keys, CONDITIONING's encoders)
    prefix: str  # where its keys sit in a checkpoint
    layout: Literal["hf", "openclip"]  # transformers' CLIPTextModel names, or OpenCLIP's own
    default_layer: int  # -1 the last layer, -2 the penultimate (CLIPSetLastLayer's numbering)
    layer_norm: bool  # the final layer norm applied to the chosen hidden layer
    pad_token: int  # what fills a chunk after its EOS: EOS for CLIP-L, 0 ("!") for OpenCLIP's tokenizers


CLIP_L_SD1 = TextRecipe("clip_l", "cond_stage_model.transformer.", "hf", -1, True, EOS)
CLIP_H_SD2 = TextRecipe("clip_h", "cond_stage_model.model.", "openclip", -2, True, 0)
CLIP_L_SDXL = TextRecipe("clip_l", "conditioner.embedders.0.transformer.", "hf", -2, False, EOS)
CLIP_G_SDXL = TextRecipe("clip_g", "conditioner.embedders.1.model.", "openclip", -2, False, 0)
CLIP_G_REFINER = TextRecipe("clip_g", "conditioner.embedders.0.model.", "openclip", -2, False, 0)


@dataclass(frozen=True)
class Family:
    name: str  # for people: "SD 1.x", "SDXL refiner", ...
    text: tuple[TextRecipe, ...]
    latent_scale: float
    head_size: int | None = None  # None: SD 1.x's 8 heads per transformer; else heads = channels // head_size
    adm: Literal["sdxl", "refiner"] | None = None  # the UNet's extra input (label_emb), built by adm.py
    prediction: Literal["eps", "v"] = "eps"
    inpainting: bool = False  # a 9-channel UNet: latent + mask + masked image

    @property
    def label(self) -> str:
        return self.name + (" inpainting" if self.inpainting else "") + (" (v-prediction)" if self.prediction == "v" else "")


SD1 = Family("SD 1.x", (CLIP_L_SD1,), 0.18215)
SD2 = Family("SD 2.x", (CLIP_H_SD2,), 0.18215, head_size=64)
# ComfyUI also reads SD 2.x saved in the SDXL-era layout, its text encoder under conditioner.embedders.0.model.
SD2_SGM = replace(SD2, text=(replace(CLIP_H_SD2, prefix="conditioner.embedders.0.model."),))
SDXL = Family("SDXL", (CLIP_L_SDXL, CLIP_G_SDXL), 0.13025, head_size=64, adm="sdxl")
SDXL_REFINER = Family("SDXL refiner", (CLIP_G_REFINER,), 0.13025, head_size=64, adm="refiner")

# Key prefixes that give away families we do not run: (prefix, what it is).
OTHER_FAMILIES = [
    ("model.diffusion_model.joint_blocks.", "SD3 (an MMDiT transformer)"),
    ("joint_blocks.", "SD3 (an MMDiT transformer)"),
    ("model.diffusion_model.double_blocks.", "Flux (a double/single-stream transformer)"),
    ("double_blocks.", "Flux (a double/single-stream transformer)"),
    ("single_transformer_blocks.", "Flux in diffusers' layout"),
    ("model.diffusion_model.x_embedder.", "a diffusion transformer (DiT: SD3, PixArt, Hunyuan-DiT, ...)"),
    ("text_encoders.t5xxl.", "a model with a T5 text encoder (SD3, Flux)"),
    ("down_blocks.", "a diffusers UNet's weights (a model folder's diffusion_pytorch_model), not a single-file checkpoint"),
]


class FamilyError(ValueError):
    """A file that is no checkpoint of a family we run; `found` says what it holds instead."""

    def __init__(self, found: str):
        super().__init__(found)
        self.found = found


def detect_family(shapes: Mapping[str, torch.Tensor], read: Callable[[str], torch.Tensor] | None = None) -> Family:
    """The family of a checkpoint from its keys and tensor shapes (meta tensors will do). `read(key)` fetches one
    small tensor's values, for the one decision shapes cannot make (SD 2.x's v-prediction)."""
    keys = list(shapes)
    for prefix, what in OTHER_FAMILIES:
        hit = next((key for key in keys if key.startswith(prefix)), None)
        if hit is not None:
            raise FamilyError(f"this is {what}, which nodegraph does not run (key {hit}); it runs SD 1.x, SD 2.x, "
                              f"SDXL and the SDXL refiner")
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        unet_keys = sum(key.startswith(UNET_PREFIX) for key in keys)
        raise FamilyError(f"it has no {UNET_PREFIX}input_blocks.0.0.weight, so no SD UNet ({unet_keys} "
                          f"{UNET_PREFIX}* keys of {len(keys)}; e.g. {', '.join(keys[:3]) or 'none'})")
    adm = shapes.get(UNET_PREFIX + "label_emb.0.0.weight")
    has = lambda prefix: any(key.startswith(prefix) for key in keys)  # noqa: E731
    if adm is not None:  # SDXL: the text encoders tell base from refiner; a UNet alone, its ADM width
        if has(CLIP_G_SDXL.prefix):
            family = SDXL
        elif has(CLIP_G_REFINER.prefix):
            family = SDXL_REFINER
        else:
            family = {2816: SDXL, 2560: SDXL_REFINER}.get(adm.shape[1])
        sizes = {SDXL: 6, SDXL_REFINER: 5}.get(family)  # 256-wide embeddings of sizes (and the aesthetic score)
        projection = shapes.get(CLIP_G_SDXL.prefix + "text_projection",
                                shapes.get(CLIP_G_REFINER.prefix + "text_projection"))
        pooled = projection.shape[1] if projection is not None else 1280
        if family is None or adm.shape[1] != pooled + 256 * sizes:
            raise FamilyError(f"its UNet takes a {adm.shape[1]}-wide label_emb input, which fits neither SDXL "
                              f"(pooled text + 6 x 256 size embeddings, 2816) nor its refiner (+ 5 x 256, 2560): an "
                              "SDXL-like model nodegraph does not know")
    elif has(CLIP_H_SD2.prefix):
        family = SD2
    elif has(CLIP_L_SD1.prefix):
        family = SD1
    elif has(CLIP_G_REFINER.prefix):
        family = SD2_SGM
    else:  # no text encoder (the loader says so): the UNet's context width tells what it was made for
        family = SD2 if _context_width(shapes) == 1024 else SD1
    if family.head_size is not None and family.adm is None:  # SD 2.x: eps or v, decided as ComfyUI does
        family = _sd2_prediction(family, shapes, read, conv_in.shape[1])
    if conv_in.shape[1] == 9:
        family = replace(family, inpainting=True)
    elif conv_in.shape[1] != 4:
        raise FamilyError(f"its UNet takes {conv_in.shape[1]} input channels (4 for a model, 9 for an inpainting "
                          "model): a kind of model nodegraph does not know")
    return family


def _context_width(shapes) -> int | None:
    return next((tensor.shape[1] for key, tensor in shapes.items()
                 if key.startswith(UNET_PREFIX) and key.endswith(".attn2.to_k.weight")), None)


def _sd2_prediction(family: Family, shapes, read, in_channels: int) -> Family:
    probe = UNET_PREFIX + V_PREDICTION_PROBE
    if in_channels != 4 or probe not in shapes or read is None:
        return family
    if torch.std(read(probe).float(), unbiased=False) > V_PREDICTION_STD:
        return replace(family, prediction="v")
    return family


def part_prefixes(family: Family) -> dict[str, str]:
    """Each part's key prefix in the file: "unet", "vae", and one per text encoder by its name."""
    return {"unet": UNET_PREFIX, "vae": VAE_PREFIX} | {recipe.name: recipe.prefix for recipe in family.text}
