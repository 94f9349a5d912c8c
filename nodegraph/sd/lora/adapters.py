"""Weight adapters: what each kind of LoRA file entry adds to one weight, by its definition, as ComfyUI applies it.

A file key is a base name (the layer, see keys.py) plus a suffix naming a factor. Per base name:
- LoRA / LoCon: up [out, r(,1,1)] and down [r, in(,kh,kw)], diff = up @ down; with a Tucker core `lora_mid`
  [r, r, kh, kw] the down factor is down 1x1 followed by the core. Spelled lora_up/lora_down (kohya), lora_B/lora_A
  (peft), lora.up/lora.down and _lora.up/_lora.down (diffusers), lora_linear_layer.up/.down (transformers).
- LoHa (LyCORIS): diff = (w1_a @ w1_b) * (w2_a @ w2_b), elementwise; with Tucker cores t1, t2 for convolutions.
- LoKr (LyCORIS): diff = kron(w1, w2), each factor whole or as a product a @ b (w2 also with a Tucker core t2).
- Full differences: diff (weight), diff_b (bias), w_norm / b_norm (a norm layer's weight and bias).
- Placed / Joined: any of these on part of a parameter (a row block of a fused q/k/v projection, a transpose).
Each adapter is scaled by alpha / rank when the file gives an alpha (1 otherwise), then by the strength:
W' = W + strength * (alpha / rank) * diff. With `dora_scale` (DoRA) the merged weight is renormalised instead
(`weight_decompose`). Everything is computed in float32; the caller casts the result to the model's dtype.
"""

from dataclasses import dataclass

import torch

from .file import LoraError

LORA_FACTORS = (  # (up, down) suffix pairs of the plain LoRA spellings
    (".lora_up.weight", ".lora_down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
    (".lora_B", ".lora_A"),
)
LORA_MID = ".lora_mid.weight"
LOHA_FACTORS = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")
LOHA_CORES = (".hada_t1", ".hada_t2")
LOKR_FACTORS = (".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")
WEIGHT_DIFFS = (".diff", ".w_norm")
BIAS_DIFFS = (".diff_b", ".b_norm")
ALPHA, DORA_SCALE = ".alpha", ".dora_scale"
WEIGHT_KINDS = {"LoRA": tuple(s for pair in LORA_FACTORS for s in pair), "LoHa": LOHA_FACTORS + LOHA_CORES,
                "LoKr": LOKR_FACTORS, "full difference": WEIGHT_DIFFS}

SUFFIXES = sorted({s for pair in LORA_FACTORS for s in pair} | {LORA_MID, ALPHA, DORA_SCALE} | set(LOHA_FACTORS)
                  | set(LOHA_CORES) | set(LOKR_FACTORS) | set(WEIGHT_DIFFS) | set(BIAS_DIFFS), key=len, reverse=True)


def split_key(key: str) -> tuple[str, str] | None:
    """(base name, suffix) of a LoRA file key, or None when it ends in no adapter suffix we know."""
    for suffix in SUFFIXES:  # longest first: ".lora_B.weight" before ".lora_B"
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[:-len(suffix)], suffix
    return None


def _f32(tensor: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device=device, dtype=torch.float32)


def _tucker(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LyCORIS's Tucker rebuild: core [r, r, kh, kw] with a [r, out] and b [r, in] -> [out, in, kh, kw]."""
    return torch.einsum("i j k l, j r, i p -> p r k l", core, b, a)


@dataclass(frozen=True, eq=False)
class Adapter:
    """One file entry's change to one weight. `keys`: the file keys it was read from (for messages)."""

    keys: tuple[str, ...]

    @property
    def scale(self) -> float:
        return 1.0

    dora_scale = None

    def diff(self, device) -> torch.Tensor:
        """The unscaled difference, float32 (its shape may be the weight's flattened, as files store it)."""
        raise NotImplementedError

    def diff_shape(self) -> torch.Size:
        """The shape `diff` has, computed on the meta device; raises ValueError if the factors do not fit together."""
        try:
            return self.diff("meta").shape
        except RuntimeError as error:
            raise ValueError(f"its factors do not fit together ({error})") from error

    def fits(self, weight_shape: torch.Size) -> str | None:
        """None if this adapter can change a weight of `weight_shape`, else what is wrong."""
        shape = self.diff_shape()
        if shape.numel() != weight_shape.numel() or shape[:1] != weight_shape[:1]:
            return f"gives a {tuple(shape)} difference for a {tuple(weight_shape)} weight"
        if self.dora_scale is not None and self.dora_scale.numel() not in (weight_shape[0], weight_shape[1:2].numel()):
            return f"has a {tuple(self.dora_scale.shape)} dora_scale for a {tuple(weight_shape)} weight"
        return None

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """`weight` changed by this adapter at `strength`. `weight` is a float32 contiguous copy of the layer's
        weight that the adapter may change in place (and return)."""
        diff = self.diff(weight.device).reshape(weight.shape)
        if self.dora_scale is None:
            return weight.add_(diff, alpha=strength * self.scale)
        return weight_decompose(weight, diff * self.scale, _f32(self.dora_scale, weight.device), strength)


@dataclass(frozen=True, eq=False)
class ScaledAdapter(Adapter):
    """An adapter with a rank, scaled by the file's alpha / rank (scale 1 without an alpha), optionally DoRA."""

    alpha: float | None = None
    dora_scale: torch.Tensor | None = None

    @property
    def rank(self) -> int | None:
        raise NotImplementedError

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None or self.rank is None else self.alpha / self.rank


@dataclass(frozen=True, eq=False)
class LoRA(ScaledAdapter):
    up: torch.Tensor = None
    down: torch.Tensor = None
    mid: torch.Tensor | None = None  # LoCon's Tucker core: down is then a 1x1 [r, in, 1, 1]

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def factors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(up [out, r], down [r, in * kh * kw]) in float32."""
        up, down = _f32(self.up, device), _f32(self.down, device)
        if self.mid is not None:  # the core's spatial kernel after the 1x1 down projection
            down = torch.einsum("o r h w, r i -> o i h w", _f32(self.mid, device), down.flatten(1))
        return up.flatten(1), down.flatten(1)

    def diff(self, device) -> torch.Tensor:
        up, down = self.factors(device)
        return up @ down

    def diff_shape(self) -> torch.Size:
        # Worked out from the factors' shapes: the meta device would do it too, but its first use imports torch's
        # symbolic-shape machinery (sympy, ~30 MiB resident) into a process that otherwise never needs it.
        rows, rank = self.up.shape[0], self.up[0].numel()
        if self.mid is not None:
            if self.mid.ndim != 4 or self.mid.shape[1] != self.down.shape[0]:
                raise ValueError(f"its factors do not fit together (a {tuple(self.mid.shape)} core after a "
                                 f"{tuple(self.down.shape)} down)")
            inner, columns = self.mid.shape[0], self.down[0].numel() * self.mid[0, 0].numel()
        else:
            inner, columns = self.down.shape[0], self.down[0].numel()
        if rank != inner:
            raise ValueError(f"its factors do not fit together (a {tuple(self.up.shape)} up after a "
                             f"{tuple(self.down.shape)} down)")
        return torch.Size([rows, columns])

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        if self.dora_scale is not None:
            return super().apply(weight, strength)
        # One matrix product accumulated into the weight: no full-size difference is made (a third of the time)
        up, down = self.factors(weight.device)
        weight.view(weight.shape[0], -1).addmm_(up, down, alpha=strength * self.scale)
        return weight


@dataclass(frozen=True, eq=False)
class LoHa(ScaledAdapter):
    w1_a: torch.Tensor = None
    w1_b: torch.Tensor = None
    w2_a: torch.Tensor = None
    w2_b: torch.Tensor = None
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    def diff(self, device) -> torch.Tensor:
        w1_a, w1_b, w2_a, w2_b = (_f32(t, device) for t in (self.w1_a, self.w1_b, self.w2_a, self.w2_b))
        if self.t1 is not None:
            return _tucker(_f32(self.t1, device), w1_a, w1_b) * _tucker(_f32(self.t2, device), w2_a, w2_b)
        return (w1_a @ w1_b) * (w2_a @ w2_b)


@dataclass(frozen=True, eq=False)
class LoKr(ScaledAdapter):
    w1: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    @property
    def rank(self) -> int | None:
        # ComfyUI takes the rank of the factored w2, else of the factored w1; with both whole, alpha is unused
        if self.w2 is None:
            return self.w2_b.shape[0]
        return None if self.w1 is not None else self.w1_b.shape[0]

    def diff(self, device) -> torch.Tensor:
        w1 = _f32(self.w1, device) if self.w1 is not None else _f32(self.w1_a, device) @ _f32(self.w1_b, device)
        if self.w2 is not None:
            w2 = _f32(self.w2, device)
        elif self.t2 is not None:
            w2 = _tucker(_f32(self.t2, device), _f32(self.w2_a, device), _f32(self.w2_b, device))
        else:
            w2 = _f32(self.w2_a, device) @ _f32(self.w2_b, device)
        if w2.ndim == 4:  # a convolution: the small factor spans no kernel positions
            w1 = w1[:, :, None, None]
        return torch.kron(w1.contiguous(), w2.contiguous())  # kron views its inputs: an einsum result may not allow it


@dataclass(frozen=True, eq=False)
class Difference(Adapter):
    """A full difference, added at the strength (no rank, no alpha)."""

    tensor: torch.Tensor = None

    def diff(self, device) -> torch.Tensor:
        return _f32(self.tensor, device)


@dataclass(frozen=True, eq=False)
class Placed(Adapter):
    """An adapter of part of a parameter (ComfyUI's offset patches): rows [start, stop) of a fused projection
    (OpenCLIP's in_proj_weight holds q, k and v, which LoRA files name as three layers), or the parameter's
    transpose (OpenCLIP's text_projection [width, projection] is the transpose of the linear's weight files name)."""

    adapter: Adapter = None
    rows: tuple[int, int] | None = None
    transposed: bool = False

    def region_shape(self, shape: torch.Size) -> torch.Size:
        if self.transposed:
            shape = torch.Size([shape[1], shape[0], *shape[2:]])
        return torch.Size([self.rows[1] - self.rows[0], *shape[1:]]) if self.rows is not None else shape

    def fits(self, weight_shape: torch.Size) -> str | None:
        if self.rows is not None and self.rows[1] > weight_shape[0]:
            return f"changes rows {self.rows[0]}:{self.rows[1]} of a {tuple(weight_shape)} parameter"
        return self.adapter.fits(self.region_shape(weight_shape))

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        region = weight.t() if self.transposed else weight
        if self.rows is not None:
            region = region[self.rows[0]:self.rows[1]]
        # A row block of a contiguous weight is contiguous and is changed where it lies; a transpose is changed
        # in a contiguous copy and written back. DoRA returns a new tensor: written back too.
        work = region if region.is_contiguous() else region.contiguous()
        result = self.adapter.apply(work, strength)
        if result is not region:
            region.copy_(result)
        return weight


@dataclass(frozen=True, eq=False)
class Joined(Adapter):
    """Several adapters of disjoint parts of one parameter, from one file (q, k and v of one in_proj_weight)."""

    parts: tuple[Placed, ...] = ()

    def fits(self, weight_shape: torch.Size) -> str | None:
        return next((problem for part in self.parts if (problem := part.fits(weight_shape)) is not None), None)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        for part in self.parts:
            weight = part.apply(weight, strength)
        return weight


def weight_decompose(weight: torch.Tensor, diff: torch.Tensor, dora_scale: torch.Tensor, strength: float) -> torch.Tensor:
    """DoRA as ComfyUI merges it: the weight plus the (alpha-scaled) difference, renormalised to `dora_scale`'s
    magnitudes, then blended with the weight by the strength. The magnitudes run per output channel when
    dora_scale's first dimension is the weight's (there ComfyUI divides by the norms of the weight before the
    adapter, where LyCORIS takes the merged weight's; we follow ComfyUI so pictures match), else per input channel
    (the merged weight's norms)."""
    merged = weight + diff
    rest = [1] * (weight.ndim - 1)
    if dora_scale.shape[0] == weight.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(weight.shape[0], *rest)
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *rest).transpose(0, 1)
    norm = norm + torch.finfo(torch.float32).eps
    merged = merged * (dora_scale.reshape(norm.shape) / norm)
    if strength != 1.0:
        return weight + strength * (merged - weight)
    return merged


def read_adapters(path, base: str, parts: dict[str, torch.Tensor]) -> tuple[dict[str, Adapter], list[str]]:
    """The adapters of one base name, by the parameter they change ("weight", "bias"), and the suffixes that belong
    to none of them (reported as unused). Raises LoraError for an incomplete or self-contradictory entry."""
    parts = dict(parts)
    keys = lambda *suffixes: tuple(base + s for s in suffixes if s in parts)  # noqa: E731

    def need(*suffixes: str) -> None:
        missing = [s for s in suffixes if s not in parts]
        if missing:
            raise LoraError(path, f"{base}: has {', '.join(sorted(s.lstrip('._') for s in parts))} but no "
                                  f"{', '.join(s.lstrip('._') for s in missing)}")

    kinds = {kind: suffixes for kind, suffixes in WEIGHT_KINDS.items() if any(s in parts for s in suffixes)}
    if len(kinds) > 1:
        raise LoraError(path, f"{base}: has {' and '.join(kinds)} factors for one weight; a layer takes one adapter")
    alpha = _alpha(path, base, parts.get(ALPHA))
    dora = parts.get(DORA_SCALE)
    found: dict[str, Adapter] = {}
    if "LoRA" in kinds:
        pair = next((up, down) for up, down in LORA_FACTORS if up in parts or down in parts)
        need(*pair)
        found["weight"] = LoRA(keys(*pair, LORA_MID, ALPHA, DORA_SCALE), alpha, dora, up=parts[pair[0]],
                               down=parts[pair[1]], mid=parts.get(LORA_MID))
    elif "LoHa" in kinds:
        need(*LOHA_FACTORS)
        if (LOHA_CORES[0] in parts) != (LOHA_CORES[1] in parts):
            need(*LOHA_CORES)
        found["weight"] = LoHa(keys(*LOHA_FACTORS, *LOHA_CORES, ALPHA, DORA_SCALE), alpha, dora,
                               *(parts[s] for s in LOHA_FACTORS), *(parts.get(s) for s in LOHA_CORES))
    elif "LoKr" in kinds:
        w1, w1_a, w1_b, w2, w2_a, w2_b, t2 = (parts.get(s) for s in LOKR_FACTORS)
        if w1 is None:
            need(".lokr_w1_a", ".lokr_w1_b")
        if w2 is None:
            need(".lokr_w2_a", ".lokr_w2_b")
        found["weight"] = LoKr(keys(*LOKR_FACTORS, ALPHA, DORA_SCALE), alpha, dora, w1, w1_a, w1_b, w2, w2_a, w2_b, t2)
    elif kinds:
        suffix = next(s for s in WEIGHT_DIFFS if s in parts)
        found["weight"] = Difference(keys(suffix), tensor=parts[suffix])
    for suffix in BIAS_DIFFS:
        if suffix in parts:
            found["bias"] = Difference(keys(suffix), tensor=parts[suffix])
    used = {key[len(base):] for adapter in found.values() for key in adapter.keys}
    return found, [s for s in parts if s not in used]


def _alpha(path, base: str, tensor: torch.Tensor | None) -> float | None:
    if tensor is None:
        return None
    if tensor.numel() != 1:
        raise LoraError(path, f"{base}.alpha: expected one number, got a tensor of shape {tuple(tensor.shape)}")
    return float(tensor.item())
