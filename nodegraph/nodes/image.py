"""Images in and out of the graph: loading from the input folder, saving PNGs (with the workflow embedded),
previews. Ours and ComfyUI's nodes of the same name share the reading and writing in image_files.py.

Native files use our LoadImage (name -> image) and SaveImage (images, prefix; a "workflow" chunk with the workflow
as submitted); ComfyUI's formats use ComfyUI's LoadImage (image -> IMAGE, MASK) and SaveImage (images,
filename_prefix; its "prompt" and extra_pnginfo chunks, truncating quantization). PreviewImage is one node in both.
"""

import json
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from nodegraph.nodes import Choices, Link, Node, NodeInputs, RunContext
from nodegraph.nodes.image_files import (FIRST_NAME_SUFFIX, comfy_png_texts, image_refs, input_image_names,
                                         preview_prefix, read_image_file, read_mask_channel, save_images)
from nodegraph.paths import check_relative_name, confine, file_fingerprint
from nodegraph.workflow import PNG_WORKFLOW_KEY

SAVE_COMPRESS_LEVEL = 4  # ComfyUI's; fixed, so the same image gives the same bytes
PREVIEW_COMPRESS_LEVEL = 1  # previews are thrown away: favour speed (ComfyUI's too)
InputImage = Annotated[str, Choices(input_image_names, lambda env: env.input_dir)]
UPLOAD = {"image_upload": True}  # the editor and ComfyUI's frontend offer an upload button for this input


def input_file_fingerprint(env, name: str) -> list:
    return file_fingerprint(confine(env.input_dir, name))


def check_prefix(prefix: str, info: ValidationInfo) -> str:
    """A save prefix must stay inside the output folder (it may name sub-folders there)."""
    env = (info.context or {}).get("env")  # validation passes the environment: symlinks are checked too
    if env is not None:
        confine(env.output_dir, str(check_relative_name(prefix)) + FIRST_NAME_SUFFIX)
    else:
        check_relative_name(prefix)
    return prefix


class LoadImage(Node):
    COMFY_TYPE = None  # ComfyUI's LoadImage takes (image) and gives IMAGE and MASK: see ComfyUI.LoadImage
    NATIVE = True
    CATEGORY = "image"
    DESCRIPTION = ("Load an image from the input folder as RGB (transparency is dropped; EXIF rotation applied; "
                   "an animation's frames of the first frame's size come as a batch). "
                   "For img2img, VAEEncode crops sides that are not multiples of 8.")
    OUTPUTS = {"image": "IMAGE"}

    class Inputs(NodeInputs):
        name: InputImage = Field(description="image file name in the input folder", json_schema_extra=UPLOAD)

    @classmethod
    def fingerprint(cls, env, constants):
        return input_file_fingerprint(env, constants["name"])

    def run(self, ctx: RunContext, name):
        return {"image": read_image_file(confine(ctx.env.input_dir, name)).images}


class ComfyLoadImage(Node):
    TYPE = "ComfyUI.LoadImage"
    COMFY_TYPE = "LoadImage"
    DISPLAY_NAME = "Load Image"
    CATEGORY = "image"
    DESCRIPTION = ("Load an image from the input folder: its RGB pixels, and as MASK 1 - its alpha (1 where it was "
                   "transparent; a 64x64 zero mask when it has no transparency). An animation's frames come as a "
                   "batch; EXIF rotation is applied.")
    OUTPUTS = {"IMAGE": "IMAGE", "MASK": "MASK"}

    class Inputs(NodeInputs):
        image: InputImage = Field(description="image file name in the input folder", json_schema_extra=UPLOAD)

    @classmethod
    def fingerprint(cls, env, constants):
        return input_file_fingerprint(env, constants["image"])

    def run(self, ctx: RunContext, image):
        loaded = read_image_file(confine(ctx.env.input_dir, image))
        return {"IMAGE": loaded.images, "MASK": loaded.masks}


class LoadImageMask(Node):
    DISPLAY_NAME = "Load Image (as Mask)"
    CATEGORY = "mask"
    DESCRIPTION = ("Load one channel of an image from the input folder as a MASK. 'alpha' is inverted (1 where the "
                   "image is transparent, 0 everywhere for an opaque image); red, green and blue are taken as they "
                   "are.")
    OUTPUTS = {"MASK": "MASK"}

    class Inputs(NodeInputs):
        image: InputImage = Field(description="image file name in the input folder", json_schema_extra=UPLOAD)
        channel: Literal["alpha", "red", "green", "blue"] = Field("alpha", description="which channel is the mask")

    @classmethod
    def fingerprint(cls, env, constants):
        return input_file_fingerprint(env, constants["image"])

    def run(self, ctx: RunContext, image, channel):
        return {"MASK": read_mask_channel(confine(ctx.env.input_dir, image), channel)}


class SaveImage(Node):
    COMFY_TYPE = None  # ComfyUI's SaveImage takes (images, filename_prefix): see ComfyUI.SaveImage
    NATIVE = True
    CATEGORY = "image"
    DESCRIPTION = ("Save images as PNG files in the output folder, with the workflow embedded "
                   "(run the PNG with `python -m nodegraph run` to make it again).")
    OUTPUT_NODE = True
    OUTPUTS = {}

    class Inputs(NodeInputs):
        images: Link["IMAGE"] = Field(description="the images to save")
        prefix: str = Field("nodegraph", description="file name prefix; may start with a sub-folder, e.g. 'cats/cat'")

        _stays_in_output_folder = field_validator("prefix")(check_prefix)

    def run(self, ctx: RunContext, images, prefix):
        # Pixels are rounded to the nearest 8-bit value (ComfyUI's SaveImage truncates).
        # ASCII JSON always fits a tEXt chunk (Latin-1 only), whatever language the prompt is in.
        texts = {PNG_WORKFLOW_KEY: json.dumps(ctx.workflow, ensure_ascii=True)}
        paths = save_images(images, ctx.env.output_dir, prefix, compress_level=SAVE_COMPRESS_LEVEL, texts=texts,
                            rounding="nearest")
        return {"ui": {"images": image_refs(paths, ctx.env.output_dir, "output")}}


class ComfySaveImage(Node):
    TYPE = "ComfyUI.SaveImage"
    COMFY_TYPE = "SaveImage"
    DISPLAY_NAME = "Save Image"
    CATEGORY = "image"
    DESCRIPTION = ("Save images as PNG files in the output folder as ComfyUI writes them: <prefix>_NNNNN_.png with "
                   "the API prompt in a 'prompt' text chunk and extra_pnginfo's entries (the UI workflow) beside it.")
    OUTPUT_NODE = True
    OUTPUTS = {}

    class Inputs(NodeInputs):
        images: Link["IMAGE"] = Field(description="the images to save")
        filename_prefix: str = Field("ComfyUI", description="file name prefix; may start with a sub-folder, e.g. "
                                     "'cats/cat'; %width%, %height%, %year% ... %second% and %batch_num% are "
                                     "filled in")

        _stays_in_output_folder = field_validator("filename_prefix")(check_prefix)

    def run(self, ctx: RunContext, images, filename_prefix):
        texts = comfy_png_texts(ctx.prompt, ctx.extra_pnginfo)
        paths = save_images(images, ctx.env.output_dir, filename_prefix, compress_level=SAVE_COMPRESS_LEVEL,
                            texts=texts, rounding="truncate")
        return {"ui": {"images": image_refs(paths, ctx.env.output_dir, "output")}}


def save_preview(ctx: RunContext, images) -> dict:
    """Write images to the temporary folder as ComfyUI's previews are written; the node's "ui" output."""
    paths = save_images(images, ctx.env.temp_dir, preview_prefix(), compress_level=PREVIEW_COMPRESS_LEVEL,
                        texts=comfy_png_texts(ctx.prompt, ctx.extra_pnginfo), rounding="truncate")
    return {"ui": {"images": image_refs(paths, ctx.env.temp_dir, "temp")}}


class PreviewImage(Node):
    DISPLAY_NAME = "Preview Image"
    CATEGORY = "image"
    DESCRIPTION = ("Show images without keeping them: written to the temporary folder as ComfyUI_temp_<random>_NNNNN_"
                   ".png, with ComfyUI's text chunks.")
    OUTPUT_NODE = True
    OUTPUTS = {}

    class Inputs(NodeInputs):
        images: Link["IMAGE"] = Field(description="the images to show")

    def run(self, ctx: RunContext, images):
        return save_preview(ctx, images)


NODES = [LoadImage, ComfyLoadImage, LoadImageMask, SaveImage, ComfySaveImage, PreviewImage]
