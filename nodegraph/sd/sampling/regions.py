"""Where each conditioning acts on a latent, and how strongly: ComfyUI's areas, masks and strengths.

A sampler evaluates the model once per Cond over its region (a crop of the latent, or all of it) and averages the
estimates cell by cell, each weighted by its Cond's weight there (comfy/samplers.py: calc_cond_batch). The weights
never change during a run, so a `RegionPlan` computes them once per latent shape, in ComfyUI's steps:
- `fit_to_latent`: an area given as fractions becomes cells; a mask is resized (bilinear) to the latent, and with
  set_area_to_bounds its bounding box becomes the area (at least 8 x 8 cells);
- `with_opposite_areas`: every area of the positive gets a twin in the negative (and the other way round) with the
  text of the smallest negative cond around it, so both sides of CFG are evaluated over the same crops;
- `region_of`: the crop, clamped to the latent; the weight: mask * mask_strength * strength, and an area without
  a mask fades in over min(8, side // 4) cells at each edge that is not the latent's edge;
- for a model with an ADM (SDXL), each region's y from its cond's pooled output and size conditioning (adm.py),
  the positive's and the negative's defaults each (a twin is built from the other side's cond, so it gets that
  side's y, as ComfyUI's twins copy their source's encoded model inputs).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..adm import cond_adm
from ..conditioning import Area, AreaFraction, Cond, Conditioning

EDGE_FADE_CELLS = 8  # the most cells an area's edge fades in over
EMPTY_MASK_AREA = Area(8, 8, 0, 0)  # an all-zero mask's "bounds": the smallest crop, weighted 0 anyway
MIN_BOUNDS_SIDE = 8  # a mask's bounding box is widened to at least this many cells
ZERO_WEIGHT_TOTAL = 1e-37  # what each cell's summed weight starts from: cells no cond covers come out 0, not NaN
MAX_LENGTH_RATIO = 4  # contexts batch together when their common token length is at most this multiple of each


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Fit a batch of conditionings (or masks) to `batch` items: cut when longer, repeated in order when shorter."""
    if tensor.shape[0] > batch:
        return tensor[:batch]
    if tensor.shape[0] < batch:
        return tensor.repeat((math.ceil(batch / tensor.shape[0]),) + (1,) * (tensor.ndim - 1))[:batch]
    return tensor


def mask_bounds(mask: torch.Tensor) -> Area:
    """The bounding box of a mask's non-zero cells over all its items (ComfyUI's get_mask_aabb)."""
    rows, cols = torch.nonzero(mask.abs().amax(dim=0), as_tuple=True)
    if rows.numel() == 0:
        return EMPTY_MASK_AREA
    y, x = int(rows.min()), int(cols.min())
    return Area(max(MIN_BOUNDS_SIDE, int(rows.max()) - y + 1), max(MIN_BOUNDS_SIDE, int(cols.max()) - x + 1), y, x)


def fit_to_latent(cond: Cond, height: int, width: int) -> Cond:
    """The cond with its area in cells and its mask [B, height, width] at the latent's resolution."""
    area = cond.area.cells(height, width) if isinstance(cond.area, AreaFraction) else cond.area
    mask = cond.mask
    if mask is not None:
        mask = mask.float().cpu()
        mask = mask.unsqueeze(0) if mask.ndim == 2 else mask
        if tuple(mask.shape[-2:]) != (height, width):
            mask = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear").squeeze(1)
        if cond.set_area_to_bounds:
            area = mask_bounds(mask)
    return cond.replace(area=area, mask=mask)


def _twin_source(others: Sequence[Cond], area: Area) -> Cond | None:
    """The cond of the other side whose text an area's twin takes: the smallest area around it, else the first
    cond over the whole latent; None when there is neither."""
    chosen = None
    for other in others:
        if other.area is None:
            chosen = other if chosen is None else chosen
        elif other.area.contains(area):
            smaller = chosen is not None and chosen.area is not None and (
                chosen.area.height * chosen.area.width > other.area.height * other.area.width)
            if chosen is None or chosen.area is None or smaller:
                chosen = other
    return chosen


def _add_twins(conds: list[Cond], others: list[Cond]) -> None:
    for cond in conds:
        if cond.area is None:
            continue
        source = _twin_source(others, cond.area)
        if source is None or source.area == cond.area:
            continue
        others.append(cond.with_model_inputs_of(source))


def with_opposite_areas(positive: Sequence[Cond], negative: Sequence[Cond]) -> tuple[list[Cond], list[Cond]]:
    """Both lists, each area cond of one side twinned on the other: the twin keeps the cond's area, mask and
    strength and takes the other side's text and size conditioning (ComfyUI's create_cond_with_same_area_if_none,
    positive first)."""
    positive, negative = list(positive), list(negative)
    _add_twins(positive, negative)
    _add_twins(negative, positive)
    return positive, negative


@dataclass(frozen=True)
class Region:
    """One cond resolved against a latent [B, C, H, W]: the crop the model sees and the cond's weight there."""

    context: torch.Tensor  # [B, T, C] on the device, one per latent item
    rows: slice
    cols: slice
    weight: torch.Tensor  # [B, C, h, w] on the device
    y: torch.Tensor | None = None  # [B, adm width] on the device: SDXL's ADM input; None for models without one

    @property
    def crop_shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape[-2:])


def _fade_edges(weight: torch.Tensor, area: Area, height: int, width: int) -> None:
    """Fade the weight in over the first and last cells of each side of the area that lies inside the latent
    (in place), so an area prompt blends into its surroundings."""
    for axis, offset, full in ((2, area.y, height), (3, area.x, width)):
        size = weight.shape[axis]
        fade = min(EDGE_FADE_CELLS, size // 4)
        for t in range(fade):
            factor = (1.0 / fade) * (t + 1)  # ComfyUI's arithmetic, for the same float32 weights
            if offset != 0:
                weight.narrow(axis, t, 1).mul_(factor)
            if offset + size < full:
                weight.narrow(axis, size - 1 - t, 1).mul_(factor)


def region_of(cond: Cond, shape: Sequence[int], device: torch.device, adm: str | None = None,
              negative: bool = False) -> Region:
    """The region of a fitted cond (see fit_to_latent) over a latent of `shape` [B, C, H, W]; with `adm` (the
    family's kind, "sdxl"/"refiner") its y too, with the defaults of the positive or the `negative` side."""
    batch, channels, height, width = shape
    area = cond.area
    rows, cols = slice(0, height), slice(0, width)
    if area is not None:
        rows = slice(area.y, area.y + min(height - area.y, area.height))
        cols = slice(area.x, area.x + min(width - area.x, area.width))
        if rows.stop <= rows.start or cols.stop <= cols.start:
            raise ValueError(f"a conditioning area ({area.height} x {area.width} cells at y={area.y}, x={area.x}) "
                             f"lies outside the latent of {height} x {width} cells: set it inside the image")
    if cond.mask is not None:
        mask = repeat_to_batch(cond.mask[:batch, rows, cols] * cond.mask_strength, batch)
        weight = mask.unsqueeze(1).repeat(1, channels, 1, 1) * cond.strength
    else:
        weight = torch.ones((batch, channels, rows.stop - rows.start, cols.stop - cols.start)) * cond.strength
        if area is not None:
            _fade_edges(weight, area, height, width)
    context = repeat_to_batch(cond.context, batch).to(device)
    y = None if adm is None else repeat_to_batch(cond_adm(cond, adm, height, width, negative), batch).to(device)
    return Region(context=context, rows=rows, cols=cols, weight=weight.to(device), y=y)


def can_batch(first: Region, other: Region) -> bool:
    """Whether two regions go through the model in one call: same crop, contexts that meet at a common length."""
    if first.crop_shape != other.crop_shape or first.context.shape[0] != other.context.shape[0]:
        return False
    if first.context.shape[2] != other.context.shape[2] or (first.y is None) != (other.y is None):
        return False
    a, b = first.context.shape[1], other.context.shape[1]
    return math.lcm(a, b) // min(a, b) <= MAX_LENGTH_RATIO


@dataclass
class RegionPlan:
    """What a guided model evaluates for a latent shape: the regions of each conditioning list (positive, then
    negative), each cell's summed weight per list, and the regions grouped into model calls."""

    regions: list[list[Region]]
    totals: list[torch.Tensor]  # per list: [B, C, H, W], the summed weights plus ZERO_WEIGHT_TOTAL
    calls: list[list[tuple[int, Region]]]  # per model call: (list index, region) pairs

    @classmethod
    def build(cls, conditionings: Sequence[Conditioning], shape: Sequence[int], device: torch.device,
              evaluated: Sequence[bool], adm: str | None = None) -> "RegionPlan":
        """The plan for `conditionings` (positive, negative) over a latent of `shape`; a list whose `evaluated`
        flag is False (the negative at cfg 1) still twins its areas into the other but is not evaluated. `adm`:
        the family's ADM kind, for models that take a y (SDXL)."""
        height, width = shape[-2:]
        fitted = [[fit_to_latent(c, height, width) for c in conds] for conds in conditionings]
        if len(fitted) == 2:
            fitted = list(with_opposite_areas(*fitted))
        regions = [[region_of(c, shape, device, adm, negative=index == 1) for c in conds] if wanted else []
                   for index, (conds, wanted) in enumerate(zip(fitted, evaluated))]
        totals = []
        for listed in regions:
            total = torch.full(tuple(shape), ZERO_WEIGHT_TOTAL, device=device)
            for region in listed:
                total[:, :, region.rows, region.cols] += region.weight
            totals.append(total)
        pending = [(index, region) for index, listed in enumerate(regions) for region in listed]
        calls = []
        while pending:
            first = pending[0][1]
            call = [item for item in pending if can_batch(first, item[1])]
            calls.append(call)
            pending = [item for item in pending if not any(item is chosen for chosen in call)]
        return cls(regions=regions, totals=totals, calls=calls)
