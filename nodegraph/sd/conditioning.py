"""Conditioning as ComfyUI passes it between nodes: a tuple of `Cond`, each a text encoding with where and how
strongly it acts.

ComfyUI's CONDITIONING is a list of [tensor, {options}]; ours is a tuple of frozen `Cond`s with the options as
fields (ComfyUI's keys: area, strength, mask, mask_strength, set_area_to_bounds, pooled_output, and SDXL's size
conditioning: width, height, crop_w, crop_h, target_width, target_height, aesthetic_score). A sampler reads
every Cond of its positive and of its negative (sampling/regions.py says where each acts). The operations below are
the "how" of ComfyUI's conditioning nodes (nodes.py: ConditioningCombine, Concat, Average, SetArea, SetMask,
ZeroOut); the nodes in nodegraph/nodes/conditioning.py only declare them.
"""

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Area:
    """A rectangle of a latent, in latent cells (pixels // 8), as ComfyUI's (height, width, y, x)."""

    height: int
    width: int
    y: int = 0
    x: int = 0

    def contains(self, other: "Area") -> bool:
        return (other.y >= self.y and other.x >= self.x and other.y + other.height <= self.y + self.height
                and other.x + other.width <= self.x + self.width)


@dataclass(frozen=True)
class AreaFraction:
    """A rectangle as fractions of the latent's size (ConditioningSetAreaPercentage): cells once the size is known."""

    height: float
    width: float
    y: float = 0.0
    x: float = 0.0

    def cells(self, latent_height: int, latent_width: int) -> Area:
        # Python's round (half to even), and at least one cell high and wide, as ComfyUI resolves it
        return Area(max(1, round(self.height * latent_height)), max(1, round(self.width * latent_width)),
                    round(self.y * latent_height), round(self.x * latent_width))


@dataclass(frozen=True, eq=False)
class Cond:
    """One conditioning: a text encoding and where, and how strongly, it acts on the latent.

    Fields with their defaults mean "everywhere, at full strength". The SDXL fields are what the SDXL nodes set
    (pixels; None: the sampler's default, see adm.cond_adm); SD 1.x/2.x models ignore them. Tensors live on the
    CPU in float32; the sampler moves them.
    """

    context: torch.Tensor  # [B, T, C] text-encoder states (B is usually 1; T a multiple of 77)
    pooled: torch.Tensor | None = None  # [B, C'] the pooled text state (SDXL's models take it; SD 1.x does not)
    area: Area | AreaFraction | None = None  # None: the whole latent
    strength: float = 1.0  # its weight against the other conds over its area
    mask: torch.Tensor | None = None  # [B or 1, H, W] in [0, 1], any resolution: its weight at each cell
    mask_strength: float = 1.0
    set_area_to_bounds: bool = False  # evaluate only over the mask's bounding box (ConditioningSetMask "mask bounds")
    # SDXL's size conditioning (CLIPTextEncodeSDXL / ...Refiner), in pixels; None: the latent's size, crops 0,
    # targets = width/height, aesthetic score 6 (positive) or 2.5 (negative)
    width: int | None = None
    height: int | None = None
    crop_w: int | None = None
    crop_h: int | None = None
    target_width: int | None = None
    target_height: int | None = None
    aesthetic_score: float | None = None  # the refiner's

    def replace(self, **changes) -> "Cond":
        return dataclasses.replace(self, **changes)

    def with_model_inputs_of(self, source: "Cond") -> "Cond":
        """This cond's place (area, mask, strength) with what `source` feeds the model: its text and its size
        conditioning (what ComfyUI's opposite-area twins copy: the source's model_conds)."""
        return self.replace(**{name: getattr(source, name) for name in MODEL_INPUTS})

    @property
    def is_everywhere(self) -> bool:
        """Acts on the whole latent with one weight: no area and no mask."""
        return self.area is None and self.mask is None


Conditioning = tuple[Cond, ...]
# The fields a Cond feeds the model (its text and size conditioning), as opposed to where and how strongly it acts.
MODEL_INPUTS = ("context", "pooled", "width", "height", "crop_w", "crop_h", "target_width", "target_height",
                "aesthetic_score")
SIZE_FIELDS = MODEL_INPUTS[2:]


def as_conditioning(value, what: str = "conditioning") -> Conditioning:
    """A CONDITIONING from what callers hand in: a tuple/list of Cond, one Cond, or a plain context tensor
    [B, T, C] (the tensor-level API: one Cond over the whole latent)."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 3:
            raise ValueError(f"{what}: a context tensor must be [batch, tokens, channels], "
                             f"got shape {tuple(value.shape)}")
        return (Cond(context=value),)
    if isinstance(value, Cond):
        return (value,)
    if isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(c, Cond) for c in value):
        if not value:
            raise ValueError(f"{what} is empty: it holds no conditioning to sample with")
        return tuple(value)
    raise TypeError(f"{what} must be a CONDITIONING (a tuple of Cond) or a context tensor, got {type(value).__name__}")


def encode_text(sd, text: str, embedding=None, warn=log.warning, texts_by_encoder: dict[str, str] | None = None,
                **size_conditioning) -> Conditioning:
    """A prompt in ComfyUI's syntax (weights, `embedding:name`, any length: nodegraph.sd.prompt) as CONDITIONING:
    one Cond over the whole latent, context [1, 77k, C] and ComfyUI's pooled output (CLIPTextEncode).
    `embedding(name)` gives an embedding's vectors or None; `warn` hears of missing ones. `texts_by_encoder` gives
    encoders texts of their own (CLIPTextEncodeSDXL's text_g/text_l); `size_conditioning` sets Cond's SDXL fields
    (width=..., aesthetic_score=...)."""
    unknown = set(size_conditioning) - set(SIZE_FIELDS)
    if unknown:
        raise TypeError(f"unknown size conditioning {', '.join(sorted(unknown))}: "
                        f"it is one of {', '.join(SIZE_FIELDS)}")
    context, pooled = prompt.encode_prompt(sd, text, embedding, warn, texts_by_encoder)
    return (Cond(context=context, pooled=pooled, **size_conditioning),)


# --- ComfyUI's conditioning nodes --------------------------------------------------------------------------------


def combine(first: Conditioning, second: Conditioning) -> Conditioning:
    """Both lists, one after the other: the sampler averages their predictions (ConditioningCombine)."""
    return tuple(first) + tuple(second)


def _first_of(conditioning_from: Conditioning, conditioning_to: Conditioning, node: str) -> Cond:
    """The cond of `conditioning_from` that ComfyUI's two-input nodes apply: the first (with a warning if more)."""
    if len(conditioning_from) > 1:
        log.warning("%s: conditioning_from holds %d conds; only the first is applied to conditioning_to",
                    node, len(conditioning_from))
    source = conditioning_from[0]
    for target in conditioning_to:
        if target.context.shape[2] != source.context.shape[2]:
            raise ValueError(f"{node}: conditioning_from has {source.context.shape[2]} channels per token and "
                             f"conditioning_to {target.context.shape[2]}: both must come from the same text encoder")
    return source


def concat(conditioning_to: Conditioning, conditioning_from: Conditioning) -> Conditioning:
    """Each cond of `conditioning_to` with the first of `conditioning_from` appended along the tokens, so both
    prompts are attended to at once (ConditioningConcat); options stay those of `conditioning_to`."""
    source = _first_of(conditioning_from, conditioning_to, "ConditioningConcat").context
    joined = []
    for target in conditioning_to:
        if source.shape[0] != target.context.shape[0]:
            raise ValueError(f"ConditioningConcat: conditioning_from holds a batch of {source.shape[0]} and "
                             f"conditioning_to of {target.context.shape[0]}: they must be equal")
        joined.append(target.replace(context=torch.cat([target.context, source.to(target.context)], dim=1)))
    return tuple(joined)


def average(conditioning_to: Conditioning, conditioning_from: Conditioning, to_strength: float) -> Conditioning:
    """Each cond of `conditioning_to` blended with the first of `conditioning_from`: to * w + from * (1 - w)
    (ConditioningAverage). `from` is cut, or padded with zeros, to each target's token length; pooled outputs blend
    alike, and a target without one takes the source's."""
    source = _first_of(conditioning_from, conditioning_to, "ConditioningAverage")
    blended = []
    for target in conditioning_to:
        tokens = target.context.shape[1]
        other = source.context[:, :tokens].to(target.context)
        if other.shape[1] < tokens:
            padding = other.new_zeros((other.shape[0], tokens - other.shape[1], other.shape[2]))
            other = torch.cat([other, padding], dim=1)
        context = target.context * to_strength + other * (1.0 - to_strength)
        pooled = target.pooled
        if source.pooled is not None:
            pooled = source.pooled if target.pooled is None else (
                target.pooled * to_strength + source.pooled * (1.0 - to_strength))
        blended.append(target.replace(context=context, pooled=pooled))
    return tuple(blended)


def zero_out(conditioning: Conditioning) -> Conditioning:
    """Every cond with its context (and pooled output) zeroed, options kept (ConditioningZeroOut)."""
    return tuple(c.replace(context=torch.zeros_like(c.context),
                           pooled=None if c.pooled is None else torch.zeros_like(c.pooled)) for c in conditioning)


def set_area(conditioning: Conditioning, area: Area | AreaFraction, strength: float) -> Conditioning:
    """Every cond limited to `area` with weight `strength` (ConditioningSetArea / ...Percentage). It drops a
    mask's "mask bounds" setting, as ComfyUI does, but keeps the mask."""
    return tuple(c.replace(area=area, strength=float(strength), set_area_to_bounds=False) for c in conditioning)


def set_area_in_pixels(conditioning: Conditioning, width: int, height: int, x: int, y: int,
                       strength: float) -> Conditioning:
    """ConditioningSetArea's pixels to latent cells: each value floor-divided by 8."""
    return set_area(conditioning, Area(height // 8, width // 8, y // 8, x // 8), strength)


def set_mask(conditioning: Conditioning, mask: torch.Tensor, strength: float, mask_bounds: bool) -> Conditioning:
    """Every cond weighted by `mask` (its region; any resolution, fitted to the latent when sampling) times
    `strength`; with `mask_bounds` the model sees only the mask's bounding box (ConditioningSetMask)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a [batch, height, width] or [height, width] tensor, got {shape}")
    mask = (mask if mask.ndim == 3 else mask.unsqueeze(0)).float()
    return tuple(c.replace(mask=mask, mask_strength=float(strength), set_area_to_bounds=bool(mask_bounds))
                 for c in conditioning)
