"""Small stand-ins for ComfyUI's core nodes, declaring ComfyUI's inputs (names, order, defaults, bounds, flags),
outputs and display names, so conversion is tested apart from the real nodes. Tests only: they do no work.

test_standins_match_real_nodes keeps them honest: where the registry has the real node, its declaration must match.
"""

from typing import Literal

from pydantic import Field

from nodegraph.nodes import Link, Node, NodeInputs, NodeRegistry

MAX_RESOLUTION = 16384
SAMPLERS = Literal["euler", "euler_ancestral", "dpmpp_sde", "dpmpp_2m", "uni_pc_bh2"]
SCHEDULERS = Literal["normal", "karras", "simple"]
UPSCALE_METHODS = Literal["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CONTROL = {"control_after_generate": True}


class StandIn(Node):
    TYPE = "StandIn"  # the base is never registered

    def run(self, ctx, **inputs):
        return {name: None for name in self.OUTPUTS}


class CheckpointLoaderSimple(StandIn):
    TYPE = "CheckpointLoaderSimple"
    DISPLAY_NAME = "Load Checkpoint"
    OUTPUTS = {"MODEL": "MODEL", "CLIP": "CLIP", "VAE": "VAE"}

    class Inputs(NodeInputs):
        ckpt_name: str


class CLIPTextEncode(StandIn):
    TYPE = "CLIPTextEncode"
    DISPLAY_NAME = "CLIP Text Encode (Prompt)"
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        text: str = Field(json_schema_extra={"multiline": True})
        clip: Link["CLIP"]


class EmptyLatentImage(StandIn):
    TYPE = "EmptyLatentImage"
    DISPLAY_NAME = "Empty Latent Image"
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        width: int = Field(512, ge=16, le=MAX_RESOLUTION)
        height: int = Field(512, ge=16, le=MAX_RESOLUTION)
        batch_size: int = Field(1, ge=1, le=4096)


class KSampler(StandIn):
    TYPE = "KSampler"
    DISPLAY_NAME = "KSampler"
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        model: Link["MODEL"]
        seed: int = Field(0, ge=0, le=2**64 - 1, json_schema_extra=CONTROL)
        steps: int = Field(20, ge=1, le=10000)
        cfg: float = Field(8.0, ge=0.0, le=100.0)
        sampler_name: SAMPLERS = "euler"
        scheduler: SCHEDULERS = "normal"
        positive: Link["CONDITIONING"]
        negative: Link["CONDITIONING"]
        latent_image: Link["LATENT"]
        denoise: float = Field(1.0, ge=0.0, le=1.0)


class VAEDecode(StandIn):
    TYPE = "VAEDecode"
    DISPLAY_NAME = "VAE Decode"
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        samples: Link["LATENT"]
        vae: Link["VAE"]


class VAEEncode(StandIn):
    TYPE = "VAEEncode"
    DISPLAY_NAME = "VAE Encode"
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        pixels: Link["IMAGE"]
        vae: Link["VAE"]


class VAEEncodeForInpaint(StandIn):
    TYPE = "VAEEncodeForInpaint"
    DISPLAY_NAME = "VAE Encode (for Inpainting)"
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        pixels: Link["IMAGE"]
        vae: Link["VAE"]
        mask: Link["MASK"]
        grow_mask_by: int = Field(6, ge=0, le=64)


class SaveImage(StandIn):
    TYPE = "SaveImage"
    DISPLAY_NAME = "Save Image"
    OUTPUT_NODE = True
    OUTPUTS = {}

    class Inputs(NodeInputs):
        images: Link["IMAGE"]
        filename_prefix: str = "ComfyUI"


class PreviewImage(StandIn):
    TYPE = "PreviewImage"
    DISPLAY_NAME = "Preview Image"
    OUTPUT_NODE = True
    OUTPUTS = {}

    class Inputs(NodeInputs):
        images: Link["IMAGE"]


class LoadImage(StandIn):
    TYPE = "LoadImage"
    DISPLAY_NAME = "Load Image"
    OUTPUTS = {"IMAGE": "IMAGE", "MASK": "MASK"}

    class Inputs(NodeInputs):
        image: str = Field(json_schema_extra={"image_upload": True})


class ImageScaleToTotalPixels(StandIn):
    TYPE = "ImageScaleToTotalPixels"
    DISPLAY_NAME = "Scale Image to Total Pixels"
    OUTPUTS = {"IMAGE": "IMAGE"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"]
        upscale_method: UPSCALE_METHODS = "nearest-exact"
        megapixels: float = Field(1.0, ge=0.01, le=16.0)


class LatentUpscale(StandIn):
    TYPE = "LatentUpscale"
    DISPLAY_NAME = "Upscale Latent"
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        samples: Link["LATENT"]
        upscale_method: Literal["nearest-exact", "bilinear", "area", "bicubic", "bislerp"] = "nearest-exact"
        width: int = Field(512, ge=0, le=MAX_RESOLUTION)
        height: int = Field(512, ge=0, le=MAX_RESOLUTION)
        crop: Literal["disabled", "center"] = "disabled"


class ImagePadForOutpaint(StandIn):
    TYPE = "ImagePadForOutpaint"
    DISPLAY_NAME = "Pad Image for Outpainting"
    OUTPUTS = {"IMAGE": "IMAGE", "MASK": "MASK"}

    class Inputs(NodeInputs):
        image: Link["IMAGE"]
        left: int = Field(0, ge=0, le=MAX_RESOLUTION)
        top: int = Field(0, ge=0, le=MAX_RESOLUTION)
        right: int = Field(0, ge=0, le=MAX_RESOLUTION)
        bottom: int = Field(0, ge=0, le=MAX_RESOLUTION)
        feathering: int = Field(40, ge=0, le=MAX_RESOLUTION)


class Blend(StandIn):
    """A node with an optional constant after its required ones, and two LATENT inputs (for bypass tests)."""

    TYPE = "Blend"  # not a ComfyUI node: made up for the widget-order and bypass rules
    OUTPUTS = {"LATENT": "LATENT"}

    class Inputs(NodeInputs):
        samples1: Link["LATENT"]
        samples2: Link["LATENT"]
        strength: float = Field(0.5, ge=0.0, le=1.0, json_schema_extra={"optional": True})
        mode: Literal["normal", "add"] = "normal"


STANDINS = [CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode, VAEEncode,
            VAEEncodeForInpaint, SaveImage, PreviewImage, LoadImage, ImageScaleToTotalPixels, LatentUpscale,
            ImagePadForOutpaint]


def standin_registry() -> NodeRegistry:
    return NodeRegistry([*STANDINS, Blend])
