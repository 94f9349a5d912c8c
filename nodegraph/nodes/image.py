"""Images in and out of the graph: loading from the input folder, saving (with the workflow embedded), previews,
resizing."""

import json
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin
from pydantic import Field, ValidationInfo, field_validator

from nodegraph.nodes import Choices, Environment, Link, Node, NodeInputs, RunContext
from nodegraph.paths import check_relative_name, confine, file_fingerprint, list_files
from nodegraph.workflow import PNG_WORKFLOW_KEY

SAVE_COMPRESS_LEVEL = 4  # fixed, so the same image gives the same bytes
PREVIEW_COMPRESS_LEVEL = 1  # previews are thrown away: favour speed
FIRST_NAME_SUFFIX = "_00001_.png"  # files are named <prefix>_NNNNN_.png, as ComfyUI names them
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def input_image_names(env: Environment) -> list[str]:
    return list_files(env.input_dir, IMAGE_SUFFIXES)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image -> IMAGE [1, 3, H, W] float32 in [0, 1]."""
    pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """IMAGE [B, 3, H, W] in [0, 1] -> B PIL images, rounded as diffusers rounds."""
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return [Image.fromarray(frame.contiguous().numpy(), "RGB") for frame in pixels]


def write_pngs(images: list[Image.Image], folder: Path, prefix: str, compress_level: int,
               pnginfo: PngImagePlugin.PngInfo | None = None) -> list[Path]:
    """Write `<prefix>_NNNNN_.png` files, numbering on from the highest number already there; never overwrites."""
    target = confine(folder, prefix + FIRST_NAME_SUFFIX)  # the prefix may name a sub-folder, never one outside
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.name[: -len(FIRST_NAME_SUFFIX)]
    counter = 1 + max((_counter_of(path.name, stem) for path in target.parent.glob(f"{stem}_*_.png")), default=0)
    written = []
    for image in images:
        while True:
            path = target.parent / f"{stem}_{counter:05d}_.png"
            counter += 1
            try:
                with open(path, "xb") as file:  # exclusive: two runs saving at once cannot clobber each other
                    image.save(file, format="PNG", pnginfo=pnginfo, compress_level=compress_level)
                break
            except FileExistsError:
                continue
        written.append(path)
    return written


def _counter_of(name: str, stem: str) -> int:
    digits = name[len(stem) + 1 : -len("_.png")]
    return int(digits) if digits.isdigit() else 0


def image_refs(paths: list[Path], root: Path, kind: str) -> list[dict]:
    """How the "executed" event names written files: {filename, subfolder, type}, relative to their root folder."""
    root = Path(root).resolve()
    refs = []
    for path in paths:
        subfolder = path.parent.relative_to(root).as_posix()
        refs.append({"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": kind})
    return refs


class LoadImage(Node):
    COMFY_TYPE = None  # ComfyUI's LoadImage takes (image) and gives IMAGE and MASK: see ComfyUI.LoadImage
    CATEGORY = "image"
    DESCRIPTION = ("Load an image from the input folder as RGB (transparency is dropped; EXIF rotation applied). "
                   "For img2img, VAEEncode crops sides that are not multiples of 8.")
    OUTPUTS = {"image": "IMAGE"}

    class Inputs(NodeInputs):
        name: Annotated[str, Choices(input_image_names, lambda env: env.input_dir)] = Field(
            description="image file name in the input folder")

    @classmethod
    def fingerprint(cls, env, constants):
        return file_fingerprint(confine(env.input_dir, constants["name"]))

    def run(self, ctx: RunContext, name):
        with Image.open(confine(ctx.env.input_dir, name)) as image:
            return {"image": to_tensor(ImageOps.exif_transpose(image))}


class SaveImage(Node):
    COMFY_TYPE = None  # ComfyUI's SaveImage takes (images, filename_prefix): see ComfyUI.SaveImage
    CATEGORY = "image"
    DESCRIPTION = ("Save images as PNG files in the output folder, with the workflow embedded "
                   "(run the PNG with `python -m nodegraph run` to make it again).")
    OUTPUT_NODE = True
    OUTPUTS = {}

    class Inputs(NodeInputs):
        images: Link["IMAGE"] = Field(description="the images to save")
        prefix: str = Field("nodegraph", description="file name prefix; may start with a sub-folder, e.g. 'cats/cat'")

        @field_validator("prefix")
        @classmethod
        def _stays_in_output_folder(cls, prefix: str, info: ValidationInfo) -> str:
            env = (info.context or {}).get("env")  # validation passes the environment: symlinks are checked too
            if env is not None:
                confine(env.output_dir, prefix + FIRST_NAME_SUFFIX)
            else:
                check_relative_name(prefix)
            return prefix

    def run(self, ctx: RunContext, images, prefix):
        metadata = PngImagePlugin.PngInfo()
        # ASCII JSON always fits a tEXt chunk (Latin-1 only), whatever language the prompt is in.
        metadata.add_text(PNG_WORKFLOW_KEY, json.dumps(ctx.workflow, ensure_ascii=True))
        paths = write_pngs(to_pil(images), ctx.env.output_dir, prefix, SAVE_COMPRESS_LEVEL, metadata)
        return {"ui": {"images": image_refs(paths, ctx.env.output_dir, "output")}}


class PreviewImage(Node):
    CATEGORY = "image"
    DESCRIPTION = "Show images without keeping them: written to the temporary folder, without the workflow."
    OUTPUT_NODE = True
    OUTPUTS = {}

    class Inputs(NodeInputs):
        images: Link["IMAGE"] = Field(description="the images to show")

    def run(self, ctx: RunContext, images):
        paths = write_pngs(to_pil(images), ctx.env.temp_dir, "preview", PREVIEW_COMPRESS_LEVEL)
        return {"ui": {"images": image_refs(paths, ctx.env.temp_dir, "temp")}}


class ImageScale(Node):
    COMFY_TYPE = None  # ComfyUI's ImageScale takes (image, upscale_method, width, height, crop): ComfyUI.ImageScale
    CATEGORY = "image"
    DESCRIPTION = ("Resize images, e.g. to bring an img2img input to the size to generate at. "
                   "crop 'center' keeps the aspect ratio by cutting the overhang; 'disabled' stretches.")
    OUTPUTS = {"image": "IMAGE"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"] = Field(description="the images to resize")
        width: int = Field(512, ge=1, le=8192, description="new width in pixels")
        height: int = Field(512, ge=1, le=8192, description="new height in pixels")
        method: Literal["bilinear", "bicubic", "area", "nearest-exact"] = Field(
            "bilinear", description="resampling filter (bilinear and bicubic antialias when shrinking)")
        crop: Literal["disabled", "center"] = Field("disabled", description="'center': keep the aspect ratio")

    def run(self, ctx: RunContext, image, width, height, method, crop):
        if crop == "center":
            image = crop_to_aspect(image, width / height)
        antialias = method in ("bilinear", "bicubic")  # the other modes take no antialias flag
        resized = F.interpolate(image, size=(height, width), mode=method, antialias=antialias)
        return {"image": resized.clamp(0, 1)}  # bicubic overshoots


def crop_to_aspect(image: torch.Tensor, aspect: float) -> torch.Tensor:
    """The largest centred region of `image` with width / height == aspect."""
    height, width = image.shape[-2:]
    if width / height > aspect:
        new_width = max(1, round(height * aspect))
        left = (width - new_width) // 2
        return image[..., :, left : left + new_width]
    new_height = max(1, round(width / aspect))
    top = (height - new_height) // 2
    return image[..., top : top + new_height, :]


NODES = [LoadImage, SaveImage, PreviewImage, ImageScale]
