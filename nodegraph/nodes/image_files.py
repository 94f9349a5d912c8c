"""Image files in and out: reading pictures (frames, EXIF rotation, transparency) as ComfyUI's LoadImage reads them,
and writing numbered PNGs with text chunks as ComfyUI's SaveImage writes them.

Our LoadImage and SaveImage nodes and ComfyUI's share these functions; only their inputs and chunks differ.
"""

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin, UnidentifiedImageError

from nodegraph.nodes import Environment
from nodegraph.nodes.pixels import channel_to_mask, to_pil, to_tensor
from nodegraph.paths import check_relative_name, confine, list_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FIRST_NAME_SUFFIX = "_00001_.png"  # files are named <prefix>_NNNNN_.png, as ComfyUI names them
NO_ALPHA_MASK_SIZE = 64  # ComfyUI's LoadImage gives a 64x64 zero mask for a picture without transparency
SINGLE_PICTURE_FORMATS = ("MPO",)  # a camera's MPO holds views of one scene, not an animation: its first frame only
PREVIEW_PREFIX = "ComfyUI_temp_"  # + 5 random letters from ComfyUI's alphabet (its 'p' twice and no 'w')
PREVIEW_ALPHABET = "abcdefghijklmnopqrstupvxyz"


def input_image_names(env: Environment) -> list[str]:
    return list_files(env.input_dir, IMAGE_SUFFIXES)


# --- reading --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedImage:
    images: torch.Tensor  # IMAGE [B, 3, H, W]: every frame of the file's size (an animation is a batch)
    masks: torch.Tensor  # MASK [B, H, W] = 1 - alpha, or zeros [B, 64, 64] when the file has no transparency


def open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise ValueError(f"{Path(path).name}: not an image file this Pillow can read") from None


def _upright(frame: Image.Image) -> Image.Image:
    """A frame as it is meant to be seen: EXIF orientation applied; 32-bit integer pictures scaled by 1 / 255
    first (ComfyUI's treatment of mode "I", e.g. some 16-bit PNGs)."""
    frame = ImageOps.exif_transpose(frame)
    if frame.mode == "I":
        frame = frame.point(lambda value: value * (1 / 255))
    return frame


def _alpha_mask(frame: Image.Image) -> torch.Tensor | None:
    if "A" in frame.getbands():
        return 1.0 - channel_to_mask(frame, "A")
    if frame.mode == "P" and "transparency" in frame.info:  # a palette with a transparent entry (GIF, PNG)
        return 1.0 - channel_to_mask(frame.convert("RGBA"), "A")
    return None


def read_image_file(path: Path) -> LoadedImage:
    """A picture file as ComfyUI's LoadImage reads it: every frame with the first frame's size becomes one batch
    item (an MPO's extra views do not); MASK is 1 - alpha, where 1 marks what was transparent."""
    images, masks = [], []
    with open_image(path) as picture:
        for frame in ImageSequence.Iterator(picture):
            frame = _upright(frame)
            image = to_tensor(frame)
            if images and image.shape != images[0].shape:
                continue  # frames of another size are skipped, as ComfyUI skips them
            images.append(image)
            masks.append(_alpha_mask(frame))
        if picture.format in SINGLE_PICTURE_FORMATS:
            images, masks = images[:1], masks[:1]
    height, width = images[0].shape[-2:]
    if all(mask is None for mask in masks):
        no_alpha = torch.zeros(len(images), NO_ALPHA_MASK_SIZE, NO_ALPHA_MASK_SIZE)
        return LoadedImage(torch.cat(images), no_alpha)
    # Some frames transparent, some not (ComfyUI fails on that mix): the opaque ones get an all-zero mask.
    full = [mask if mask is not None else torch.zeros(height, width) for mask in masks]
    return LoadedImage(torch.cat(images), torch.stack(full))


def read_mask_channel(path: Path, channel: str) -> torch.Tensor:
    """One channel of a picture's first frame as MASK [1, H, W], as ComfyUI's LoadImageMask reads it: the picture
    is taken as RGBA (opaque when it has no alpha); "alpha" is inverted (1 - alpha: 1 = was transparent), the colour
    channels are not."""
    band = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}.get(channel)
    if band is None:
        raise ValueError(f"channel must be alpha, red, green or blue; got {channel!r}")
    with open_image(path) as picture:
        frame = _upright(picture)
        if frame.getbands() != ("R", "G", "B", "A"):
            frame = frame.convert("RGBA")
        mask = channel_to_mask(frame, band)
    return (1.0 - mask if band == "A" else mask).unsqueeze(0)


# --- writing --------------------------------------------------------------------------------------------------------


def comfy_png_texts(prompt: dict | None, extra_pnginfo: dict | None) -> dict[str, str]:
    """ComfyUI's PNG text chunks: "prompt" (the API-format prompt) and one per key of extra_data.extra_pnginfo
    (its frontend sends "workflow", the UI-format graph), each as json.dumps writes it (ASCII)."""
    texts = {}
    if prompt:
        texts["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        if not isinstance(key, str) or not 1 <= len(key) <= 79 or not key.isascii() or not key.isprintable():
            raise ValueError(f"extra_pnginfo key {key!r} cannot name a PNG text chunk (1-79 printable ASCII "
                             "characters)")
        texts[key] = json.dumps(value)
    return texts


def png_info(texts: dict[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)  # ASCII JSON: a tEXt chunk, as ComfyUI's
    return info


def expand_prefix(prefix: str, width: int, height: int) -> str:
    """ComfyUI's file-name variables: %width%, %height% of the first image, and the local date and time."""
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    values = {"width": width, "height": height, "year": now.tm_year, "month": f"{now.tm_mon:02d}",
              "day": f"{now.tm_mday:02d}", "hour": f"{now.tm_hour:02d}", "minute": f"{now.tm_min:02d}",
              "second": f"{now.tm_sec:02d}"}
    for name, value in values.items():
        prefix = prefix.replace(f"%{name}%", str(value))
    return prefix


def next_counter(folder: Path, stem: str) -> int:
    """ComfyUI's numbering: one more than the highest N of the files named <stem>_N... in `folder` (any suffix)."""
    highest = 0
    if Path(folder).is_dir():
        for entry in os.scandir(folder):
            if entry.name.startswith(stem + "_"):
                digits = entry.name[len(stem) + 1 :].split("_")[0]
                if digits.isascii() and digits.isdigit():
                    highest = max(highest, int(digits))
    return highest + 1


def write_pngs(images: list[Image.Image], folder: Path, prefix: str, compress_level: int,
               pnginfo: PngImagePlugin.PngInfo | None = None) -> list[Path]:
    """Write `<prefix>_NNNNN_.png` files numbered on as ComfyUI numbers them; never overwrites a file.

    The prefix may name sub-folders inside `folder`, never a place outside it; "%batch_num%" in its file name
    becomes each image's index in the batch.
    """
    relative = check_relative_name(prefix)  # also folds "a//b" and a trailing "/" as ComfyUI's normpath does
    target = confine(folder, str(relative) + FIRST_NAME_SUFFIX)  # symlinks leading out are refused too
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.name[: -len(FIRST_NAME_SUFFIX)]
    counter = next_counter(target.parent, stem)
    written = []
    for index, image in enumerate(images):
        name = stem.replace("%batch_num%", str(index))
        while True:
            path = target.parent / f"{name}_{counter:05d}_.png"
            counter += 1
            try:
                with open(path, "xb") as file:  # exclusive: two runs saving at once cannot clobber each other
                    image.save(file, format="PNG", pnginfo=pnginfo, compress_level=compress_level)
                break
            except FileExistsError:
                continue
        written.append(path)
    return written


def save_images(images: torch.Tensor, folder: Path, prefix: str, *, compress_level: int, texts: dict[str, str],
                rounding: str) -> list[Path]:
    """IMAGE [B, 3, H, W] -> one PNG per image (see write_pngs), with `texts` as text chunks."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a batch of images [B, 3, H, W], got shape {tuple(images.shape)}")
    prefix = expand_prefix(prefix, width=images.shape[-1], height=images.shape[-2])
    return write_pngs(to_pil(images, rounding), folder, prefix, compress_level, png_info(texts))


def preview_prefix() -> str:
    return PREVIEW_PREFIX + "".join(random.choice(PREVIEW_ALPHABET) for _ in range(5))


def image_refs(paths: list[Path], root: Path, kind: str) -> list[dict]:
    """How the "executed" event names written files: {filename, subfolder, type}, relative to their root folder."""
    root = Path(root).resolve()
    refs = []
    for path in paths:
        subfolder = path.parent.relative_to(root).as_posix()
        refs.append({"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": kind})
    return refs
