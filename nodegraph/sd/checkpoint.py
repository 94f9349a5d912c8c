"""Loading single-file checkpoints (SD 1.x, SD 2.x, SDXL base and refiner) in their original layout, with no
conversion step.

Each part's architecture is inferred from tensor shapes, the modules are built on the meta device, and the file's
tensors are assigned straight into them by one strict `load_state_dict` per part: the module attribute names are the
checkpoint's key paths. Memory stays lean: each tensor is read from the file straight into its final dtype
(tensorfile.py), so the peak is the loaded weights plus one chunk.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..device import pick_device, pick_dtype, pick_vae_dtype
from .clip import TextEncoder, TextEncoderConfig
from .families import SD1, Family, FamilyError, detect_family, part_prefixes
from .layers import can_pack, packed_weight, packs
from .openclip import OpenCLIPTextConfig, OpenCLIPTextEncoder
from .sampling.schedule import DiscreteSchedule
from .tensorfile import FormatError, SafetensorsReader
from .tokenizer import Tokenizer
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig

LATENT_SCALE = SD1.latent_scale
# How each kind of part is built: module class, config class. Text encoders are built by their layout.
BUILDERS = {
    "unet": (UNet, UNetConfig),
    "vae": (VAE, VAEConfig),
    "hf": (TextEncoder, TextEncoderConfig),
    "openclip": (OpenCLIPTextEncoder, OpenCLIPTextConfig),
}
PARTS = {  # SD 1.x's parts -> (key prefix in the file, module class, config class)
    "unet": ("model.diffusion_model.", UNet, UNetConfig),
    "vae": ("first_stage_model.", VAE, VAEConfig),
    "text_encoder": ("cond_stage_model.transformer.", TextEncoder, TextEncoderConfig),
}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
# Convolution weights are laid out channels-last (NHWC): oneDNN's fastest layout on CPUs, and tensor cores' on GPUs;
# activations follow their weights' layout. The reader lays them out so while reading, with no extra copy.
CONV_LAYOUT = torch.channels_last


class CheckpointError(ValueError):
    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class StableDiffusion:
    """A loaded checkpoint: its family, tokenizer, text encoders (by ComfyUI's names: clip_l, clip_h, clip_g, in the
    family's order), UNet and VAE."""

    tokenizer: Tokenizer
    text_encoders: dict[str, nn.Module]
    unet: UNet
    vae: VAE
    device: torch.device
    dtype: torch.dtype
    family: Family = SD1
    latent_scale: float = LATENT_SCALE
    schedule: DiscreteSchedule = field(default_factory=DiscreteSchedule)  # the noise schedule the UNet was trained on
    # The text encoders' layer prompts are read from (ComfyUI's stop_at_clip_layer, CLIPSetLastLayer): -1 the last,
    # -2 the one before (A1111's "clip skip 2"); None: each encoder's default in the family (SD 1.x the last; SD 2.x
    # and SDXL the penultimate). Whether the final layer norm follows is the family's (TextRecipe.layer_norm).
    clip_layer: int | None = None

    @property
    def text_encoder(self) -> nn.Module:
        """The text encoder of a one-encoder family (SD 1.x, SD 2.x, the refiner); SDXL's first (CLIP-L)."""
        return next(iter(self.text_encoders.values()))

    def with_text_encoder(self, module: nn.Module, name: str | None = None) -> "StableDiffusion":
        """A copy with text encoder `name` (default: the first) replaced by `module` (a patched view)."""
        name = next(iter(self.text_encoders)) if name is None else name
        return dataclasses.replace(self, text_encoders={**self.text_encoders, name: module})

    def text_layer(self, name: str) -> int:
        """The hidden layer encoder `name` is read from."""
        recipe = next(recipe for recipe in self.family.text if recipe.name == name)
        return recipe.default_layer if self.clip_layer is None else self.clip_layer

    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """Tokenize and encode plain prompts (no weights, embeddings or chunks; cut at 75 tokens) -> float32 CPU
        conditioning [B,77,C]: the family's encoders at their layers, side by side on the feature axis (SDXL).
        nodegraph.sd.prompt reads ComfyUI's prompt syntax."""
        states = []
        for recipe in self.family.text:
            encoder = self.text_encoders[recipe.name]
            ids = self.tokenizer(texts, pad_token=recipe.pad_token).to(self.device)
            hidden, _ = encoder.from_embeddings(encoder.token_embeddings(ids), self.text_layer(recipe.name),
                                                recipe.layer_norm)
            states.append(hidden.float().cpu())
        return torch.cat(states, dim=-1)


class TensorFile:
    """A checkpoint's tensors, read one at a time on demand: `shapes` holds meta tensors for config inference, and
    `read(key, device, dtype)` gives a tensor converted and placed, so no weight is ever in memory twice."""

    def __init__(self, path: Path, allow_pickle: bool = False):
        self.path = path
        if not path.is_file():
            raise CheckpointError(path, "no such file")
        if path.suffix.lower() in PICKLE_SUFFIXES:
            self._open_pickle(allow_pickle)
        else:
            self._open_safetensors()

    def _open_pickle(self, allow_pickle: bool) -> None:
        if not allow_pickle:
            raise CheckpointError(self.path, f"'{self.path.suffix}' files are Python pickles, which can run code when "
                                             "loaded; convert it to .safetensors, or opt in with allow_pickle=True")
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:
            raise CheckpointError(self.path, f"cannot read as a weights-only torch file: {error}") from error
        tensors = data.get("state_dict", data)
        self.shapes = {key: torch.empty(t.shape, dtype=t.dtype, device="meta") for key, t in tensors.items() if isinstance(t, torch.Tensor)}
        self.read = lambda key, device, dtype: place(tensors[key], device, dtype)

    def _open_safetensors(self) -> None:
        try:
            reader = SafetensorsReader(self.path)
        except (FormatError, OSError) as error:
            raise CheckpointError(self.path, f"not a readable .safetensors file: {error}") from error
        self.shapes = {key: reader.meta(key) for key in reader.entries}

        def read(key: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
            try:
                return reader.read(key, dtype, CONV_LAYOUT).to(device)
            except (FormatError, OSError) as error:
                raise CheckpointError(self.path, f"cannot read tensor {key}: {error}") from error

        self.read = read


def split_parts(path: Path, tensors: dict[str, torch.Tensor], family: Family = SD1) -> dict[str, dict[str, str]]:
    """Each part's keys without the part prefix, mapped to the file's keys: "unet", "vae" and each text encoder by
    its name. Keys outside the parts (EMA copies, schedule buffers) are not ours to use and are ignored, as every SD
    loader does."""
    prefixes = part_prefixes(family)
    parts = {name: {} for name in prefixes}
    for key in tensors:
        for name, prefix in prefixes.items():
            if key.startswith(prefix):
                parts[name][key[len(prefix):]] = key
    absent = [prefixes[name] + "*" for name, weights in parts.items() if not weights]
    if absent:
        raise CheckpointError(path, f"not a whole {family.label} checkpoint: it has no {', '.join(absent)} keys "
                                    f"({len(tensors)} tensors, e.g. {', '.join(list(tensors)[:3]) or 'none'})")
    for recipe in family.text:
        if recipe.layout != "hf":
            continue
        clip = parts[recipe.name]
        if not any(key.startswith("text_model.") for key in clip):  # some old files lack the text_model level
            parts[recipe.name] = clip = {"text_model." + key: file_key for key, file_key in clip.items()}
        # position_ids is absent, int64 or (in merged models) float with non-integer values: build_part makes its own.
        clip["text_model.embeddings.position_ids"] = None
    return parts


def build_part(file: TensorFile, name: str, keys: dict[str, str | None], device: torch.device, dtype: torch.dtype,
               pack_weights: bool = False, prefix: str | None = None, kind: str | None = None, **config_options):
    """Build one part on the meta device and assign the file's tensors into it: one strict load, nothing converted twice.
    `kind`: a key of BUILDERS (default: `name`, or "hf" for SD 1.x's text_encoder); `prefix`: how the file's keys
    start, for messages (default: the part's prefix in an SD 1.x checkpoint); `config_options` go to the config's
    from_state_dict (the UNet's head_size)."""
    path = file.path
    kind = kind or ("hf" if name == "text_encoder" else name)
    module_class, config_class = BUILDERS[kind]
    prefix = PARTS[name][0] if prefix is None else prefix
    shapes = {key: file.shapes[file_key] for key, file_key in keys.items() if file_key is not None}
    try:
        config = config_class.from_state_dict(shapes, **config_options)
    except (KeyError, ValueError, IndexError) as error:
        raise CheckpointError(path, f"cannot infer the {name} architecture from its tensor shapes: missing or odd key {error}") from error
    with torch.device("meta"):
        module = module_class(config)
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(keys)), sorted(set(keys) - set(expected))
    if missing or unexpected:
        raise CheckpointError(path, describe_mismatch(prefix, missing, unexpected))
    wrong = [f"{prefix}{key} {tuple(shape.shape)} (expected {tuple(expected[key].shape)})"
             for key, shape in shapes.items() if shape.shape != expected[key].shape]
    if wrong:
        raise CheckpointError(path, f"{len(wrong)} {name} tensor(s) do not fit the inferred architecture: {', '.join(wrong[:10])}")
    packing = ({f"{name}.weight": layer for name, layer in module.named_modules() if packs(layer, dtype)}
               if pack_weights and can_pack(device, dtype) else {})
    placed = {}
    for key, file_key in keys.items():
        if file_key is None:  # a buffer we compute rather than trust (position_ids)
            placed[key] = torch.arange(expected[key].shape[-1], device=device).unsqueeze(0)
        elif key in packing:  # packed as soon as read, so the plain copy is gone before the next tensor comes
            placed[key] = packed_weight(packing[key], file.read(file_key, device, dtype))
        else:
            placed[key] = file.read(file_key, device, dtype)
    module.load_state_dict(placed, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def place(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if not tensor.is_floating_point():
        return tensor.to(device)
    layout = CONV_LAYOUT if tensor.ndim == 4 else torch.contiguous_format
    return tensor.to(device=device, dtype=dtype, memory_format=layout)


def describe_mismatch(prefix: str, missing: list[str], unexpected: list[str], shown: int = 10) -> str:
    lines = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            listed = ", ".join(prefix + key for key in keys[:shown])
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            lines.append(f"{len(keys)} {label} key(s): {listed}{more}")
    return "; ".join(lines)


def load_checkpoint(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    allow_pickle: bool = False,
    pack_weights: bool = True,
) -> StableDiffusion:
    """Load a single-file checkpoint of any family we run (SD 1.x, SD 2.x, SDXL base or refiner; their inpainting
    UNets), told from its keys and shapes (families.py). device None: CUDA when present, else CPU; dtype None: fp16 on
    CUDA, bf16 on CPUs with native bf16 matrices, else fp32. The VAE never runs in fp16 (it overflows).

    On the CPU, convolution weights (and bf16 UNet linear weights) are packed for inference (nodegraph.sd.layers);
    pack_weights=False keeps them plain tensors, for training, saving or moving the modules."""
    path = Path(path)
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    file = TensorFile(path, allow_pickle)
    try:
        family = detect_family(file.shapes, lambda key: file.read(key, torch.device("cpu"), torch.float32))
    except FamilyError as error:
        raise CheckpointError(path, f"not a checkpoint nodegraph can run: {error.found}") from error
    parts = split_parts(path, file.shapes, family)
    prefixes = part_prefixes(family)
    text_encoders = {
        recipe.name: build_part(file, recipe.name, parts[recipe.name], device, dtype, kind=recipe.layout,
                                prefix=recipe.prefix)
        for recipe in family.text
    }
    _check_context(path, family, text_encoders, file.shapes)
    return StableDiffusion(
        tokenizer=Tokenizer(),
        text_encoders=text_encoders,
        unet=build_part(file, "unet", parts["unet"], device, dtype, pack_weights, prefix=prefixes["unet"],
                        head_size=family.head_size),
        vae=build_part(file, "vae", parts["vae"], device, pick_vae_dtype(device, dtype), pack_weights),
        device=device,
        dtype=dtype,
        family=family,
        latent_scale=family.latent_scale,
        schedule=DiscreteSchedule(prediction=family.prediction),
    )


def _check_context(path: Path, family: Family, text_encoders: dict[str, nn.Module], shapes) -> None:
    """The UNet must read what the text encoders give: a mismatch is a file assembled from two models."""
    width = sum(encoder.config.width for encoder in text_encoders.values())
    context = next((tensor.shape[1] for key, tensor in shapes.items()
                    if key.startswith("model.diffusion_model.") and key.endswith(".attn2.to_k.weight")), width)
    if context != width:
        encoders = " + ".join(f"{name} {encoder.config.width}" for name, encoder in text_encoders.items())
        raise CheckpointError(path, f"a mixed file: its UNet reads {context}-wide text states, but its {family.name} "
                                    f"text encoders give {width} ({encoders})")


# --- a VAE in a file of its own (models/vae/*.safetensors) --------------------------------------------------------

# Tensors of training only (the discriminator and LPIPS of "loss.", EMA bookkeeping) that some VAE files carry.
VAE_TRAINING_PREFIXES = ("loss.", "model_ema.")
# diffusers' AutoencoderKL names -> the LDM names our modules have, applied in order (decoder.up_blocks, whose
# index runs the other way, is renamed first in diffusers_vae_key).
DIFFUSERS_VAE_NAMES = [
    (r"\.mid_block\.resnets\.0\.", ".mid.block_1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.block_2."),
    (r"\.mid_block\.attentions\.0\.", ".mid.attn_1."),
    (r"^encoder\.down_blocks\.", "encoder.down."),
    (r"\.resnets\.(\d+)\.", r".block.\1."),
    (r"\.downsamplers\.0\.", ".downsample."),
    (r"\.upsamplers\.0\.", ".upsample."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"\.conv_norm_out\.", ".norm_out."),
    (r"\.attn_1\.group_norm\.", ".attn_1.norm."),
    (r"\.attn_1\.(to_q|query)\.", ".attn_1.q."),
    (r"\.attn_1\.(to_k|key)\.", ".attn_1.k."),
    (r"\.attn_1\.(to_v|value)\.", ".attn_1.v."),
    (r"\.attn_1\.(to_out\.0|proj_attn)\.", ".attn_1.proj_out."),
]
ATTENTION_PROJECTION = re.compile(r"\.attn_1\.(q|k|v|proj_out)\.weight$")  # linear in diffusers, 1x1 conv in LDM


@dataclass
class StandaloneVAE:
    """A VAE loaded from its own file. VAE sockets carry it like a checkpoint: consumers use `.vae` (encode,
    decode), as they use a loaded checkpoint's."""

    vae: VAE
    device: torch.device
    dtype: torch.dtype
    latent_scale: float = LATENT_SCALE


class RenamedTensors:
    """A TensorFile seen under our key names, diffusers' linear attention weights as 1x1 convolutions."""

    def __init__(self, file: TensorFile, names: dict[str, str]):  # our key -> the file's key
        self.path, self._file, self._names = file.path, file, names
        self.shapes = {ours: self._our_shape(ours, file.shapes[theirs]) for ours, theirs in names.items()}

    @staticmethod
    def _our_shape(key: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[:, :, None, None] if tensor.ndim == 2 and ATTENTION_PROJECTION.search(key) else tensor

    def read(self, key: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        tensor = self._file.read(self._names[key], device, dtype)
        if tensor.shape != self.shapes[key].shape:
            tensor = tensor.reshape(self.shapes[key].shape).contiguous(memory_format=CONV_LAYOUT)
        return tensor


def diffusers_vae_key(key: str, levels: int) -> str:
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.", key)
    for pattern, replacement in DIFFUSERS_VAE_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


def vae_keys(file: TensorFile) -> tuple[TensorFile | RenamedTensors, dict[str, str], str]:
    """(tensors, our key -> their key, the keys' prefix for messages) of a VAE file in any layout we read: LDM's
    (encoder./decoder./quant_conv./post_quant_conv.), a checkpoint's first_stage_model. part, or diffusers'."""
    keys = [key for key in file.shapes if not key.startswith(VAE_TRAINING_PREFIXES)]
    in_checkpoint = PARTS["vae"][0]
    if any(key.startswith(in_checkpoint) for key in keys):
        return file, {key[len(in_checkpoint):]: key for key in keys if key.startswith(in_checkpoint)}, in_checkpoint
    if not any(key.startswith(("encoder.", "decoder.")) for key in keys):
        raise CheckpointError(file.path, f"not a VAE file: it has no encoder.* or decoder.* keys ({len(keys)} "
                                         f"tensors, e.g. {', '.join(keys[:3]) or 'none'})")
    up_blocks = {int(key.split(".")[2]) for key in keys if key.startswith("decoder.up_blocks.")}
    if up_blocks:
        names = {diffusers_vae_key(key, max(up_blocks) + 1): key for key in keys}
        return RenamedTensors(file, names), {key: key for key in names}, "(diffusers' names as ours) "
    return file, {key: key for key in keys}, ""


def load_vae(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    allow_pickle: bool = False,
    pack_weights: bool = True,
) -> StandaloneVAE:
    """Load a standalone SD VAE file (vae-ft-mse-840000-ema-pruned.safetensors and the like), strictly: every key
    must be a VAE weight of the inferred architecture. device/dtype as load_checkpoint; never fp16 (it overflows)."""
    path = Path(path)
    device = pick_device(device)
    dtype = pick_vae_dtype(device, pick_dtype(device, dtype))
    tensors, keys, prefix = vae_keys(TensorFile(path, allow_pickle))
    vae = build_part(tensors, "vae", keys, device, dtype, pack_weights, prefix=prefix)
    return StandaloneVAE(vae=vae, device=device, dtype=dtype)
