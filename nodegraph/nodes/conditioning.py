"""Conditioning nodes: prompts to CONDITIONING (in ComfyUI's prompt syntax: nodegraph.sd.prompt), clip skip, and
ComfyUI's nodes that combine, blend, place and mask conditioning.

CONDITIONING is a tuple of `nodegraph.sd.conditioning.Cond`. ComfyUI's nodes keep ComfyUI's class names, inputs
(names, order, defaults, bounds) and outputs; what each does lives in nodegraph/sd/conditioning.py. The sampler
honours every Cond's area, mask and strength (nodegraph/sd/sampling/regions.py).
"""

import dataclasses
from typing import Literal

from pydantic import Field

from nodegraph.nodes import Link, Node, NodeInputs, RunContext
from nodegraph.nodes.embedding_files import embedding_lookup, embeddings_fingerprint, missing_embedding_warning
from nodegraph.sd import conditioning as cond

MAX_RESOLUTION = 16384  # ComfyUI's bound on sizes in pixels
# ComfyUI's widgets step pixel sizes by 8 (one latent cell); its validation does not enforce it (values floor to
# cells), so this is a hint for editors, not a multiple_of bound
PIXEL_STEP = {"step": 8}


PROMPT_SYNTAX = ("ComfyUI's syntax: (text) x1.1 per level, (text:1.3), \\( \\) literal, embedding:name; "
                 "longer than 75 tokens: more chunks of 77")


def encode_prompt_text(ctx: RunContext, clip, text: str, **options) -> cond.Conditioning:
    """The one prompt encoder behind the text nodes: embeddings from the env's embeddings folders, missing ones
    warned about (and left out, as ComfyUI does). `options` are encode_text's (texts_by_encoder, size fields)."""
    embedding = embedding_lookup(ctx.env)
    return cond.encode_text(clip, text, embedding, missing_embedding_warning(ctx.env, ctx.warn), **options)


def require_encoders(clip, node: str, names: tuple[str, ...], instead: str) -> None:
    """Fail, naming what the CLIP holds, unless it has the text encoders `names` (SDXL's nodes need bigG)."""
    missing = [name for name in names if name not in clip.text_encoders]
    if missing:
        raise ValueError(f"{node} needs a CLIP with {' and '.join(names)} ({instead}); this one is "
                         f"{clip.family.name}'s with {', '.join(clip.text_encoders)}: use CLIPTextEncode")


class CLIPEncode(Node):
    NATIVE = True
    CATEGORY = "conditioning"
    DESCRIPTION = f"Encode a prompt with the checkpoint's CLIP text encoder ({PROMPT_SYNTAX})."
    OUTPUTS = {"conditioning": "CONDITIONING"}

    class Inputs(NodeInputs):
        clip: Link["CLIP"] = Field(description="the text encoder, from LoadCheckpoint")
        text: str = Field("", description="the prompt", json_schema_extra={"multiline": True})

    @classmethod
    def fingerprint(cls, env, constants):
        return embeddings_fingerprint(env, constants.get("text"))

    def run(self, ctx: RunContext, clip, text):
        return {"conditioning": encode_prompt_text(ctx, clip, text)}


class CLIPTextEncode(Node):
    DISPLAY_NAME = "CLIP Text Encode (Prompt)"
    CATEGORY = "conditioning"
    DESCRIPTION = f"ComfyUI's prompt encoder: a prompt as conditioning over the whole picture ({PROMPT_SYNTAX})."
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        text: str = Field(description="the prompt", json_schema_extra={"multiline": True})
        clip: Link["CLIP"] = Field(description="the text encoder, from a checkpoint loader")

    @classmethod
    def fingerprint(cls, env, constants):
        return embeddings_fingerprint(env, constants.get("text"))

    def run(self, ctx: RunContext, text, clip):
        return {"CONDITIONING": encode_prompt_text(ctx, clip, text)}


SIZE = {"ge": 0, "le": MAX_RESOLUTION}  # ComfyUI's bounds on the SDXL nodes' sizes (pixels, any step)


class CLIPTextEncodeSDXL(Node):
    DISPLAY_NAME = "CLIP Text Encode (SDXL)"
    CATEGORY = "advanced/conditioning"
    DESCRIPTION = ("SDXL base's prompt encoder: text_g for the OpenCLIP bigG encoder, text_l for CLIP-L, and the "
                   "size conditioning the model was trained with (the image's size, the crop's top-left corner, the "
                   f"size wanted), in pixels ({PROMPT_SYNTAX}).")
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        clip: Link["CLIP"] = Field(description="SDXL base's text encoders, from a checkpoint loader")
        width: int = Field(1024, **SIZE, description="the original image's width it says the picture comes from")
        height: int = Field(1024, **SIZE, description="the original image's height")
        crop_w: int = Field(0, **SIZE, description="the left edge of the crop taken from it (0: none)")
        crop_h: int = Field(0, **SIZE, description="the top edge of the crop taken from it (0: none)")
        target_width: int = Field(1024, **SIZE, description="the width of the picture wanted")
        target_height: int = Field(1024, **SIZE, description="the height of the picture wanted")
        text_g: str = Field(description="the prompt for bigG (clip_g)", json_schema_extra={"multiline": True})
        text_l: str = Field(description="the prompt for CLIP-L (clip_l)", json_schema_extra={"multiline": True})

    @classmethod
    def fingerprint(cls, env, constants):
        texts = [constants.get(name) for name in ("text_g", "text_l")]
        return embeddings_fingerprint(env, "\n".join(text for text in texts if isinstance(text, str)))

    def run(self, ctx: RunContext, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        require_encoders(clip, "CLIPTextEncodeSDXL", ("clip_l", "clip_g"), "an SDXL base checkpoint's")
        return {"CONDITIONING": encode_prompt_text(
            ctx, clip, text_g, texts_by_encoder={"clip_g": text_g, "clip_l": text_l}, width=width, height=height,
            crop_w=crop_w, crop_h=crop_h, target_width=target_width, target_height=target_height)}


class CLIPTextEncodeSDXLRefiner(Node):
    DISPLAY_NAME = "CLIP Text Encode (SDXL Refiner)"
    CATEGORY = "advanced/conditioning"
    DESCRIPTION = ("The SDXL refiner's prompt encoder: the prompt with the aesthetic score to aim for (6 is the usual "
                   f"positive, 2.5 the negative) and the image size, in pixels ({PROMPT_SYNTAX}).")
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        ascore: float = Field(6.0, ge=0.0, le=1000.0, description="the aesthetic score (LAION's 0-10 scale)",
                              json_schema_extra={"step": 0.01})
        width: int = Field(1024, **SIZE, description="the image's width")
        height: int = Field(1024, **SIZE, description="the image's height")
        text: str = Field(description="the prompt", json_schema_extra={"multiline": True})
        clip: Link["CLIP"] = Field(description="a text encoder with bigG (the refiner's, or SDXL base's)")

    @classmethod
    def fingerprint(cls, env, constants):
        return embeddings_fingerprint(env, constants.get("text"))

    def run(self, ctx: RunContext, ascore, width, height, text, clip):
        require_encoders(clip, "CLIPTextEncodeSDXLRefiner", ("clip_g",), "an SDXL refiner or base checkpoint's")
        return {"CONDITIONING": encode_prompt_text(ctx, clip, text, aesthetic_score=ascore, width=width,
                                                   height=height)}


class CLIPSetLastLayer(Node):
    DISPLAY_NAME = "CLIP Set Last Layer"
    CATEGORY = "conditioning"
    DESCRIPTION = ("Clip skip: prompts are read from an earlier layer of the text encoder (-1: the last, -2: the one "
                   "before, A1111's clip skip 2), with the final layer norm applied to it.")
    OUTPUTS = {"CLIP": "CLIP"}

    class Inputs(NodeInputs):
        clip: Link["CLIP"] = Field(description="the text encoder")
        stop_at_clip_layer: int = Field(-1, ge=-24, le=-1, description="the layer to read prompts from, counted "
                                                                         "from the end")

    def run(self, ctx: RunContext, clip, stop_at_clip_layer):
        for encoder in clip.text_encoders.values():  # a layer beyond an encoder's depth fails here, by name
            encoder.layer_index(stop_at_clip_layer)
        return {"CLIP": dataclasses.replace(clip, clip_layer=stop_at_clip_layer)}


class ConditioningCombine(Node):
    DISPLAY_NAME = "Conditioning (Combine)"
    CATEGORY = "conditioning"
    DESCRIPTION = ("Both conditionings at once: the sampler averages their predictions, each over its own area "
                   "and with its own strength.")
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        conditioning_1: Link["CONDITIONING"] = Field(description="the first conditioning")
        conditioning_2: Link["CONDITIONING"] = Field(description="the second conditioning")

    def run(self, ctx: RunContext, conditioning_1, conditioning_2):
        return {"CONDITIONING": cond.combine(conditioning_1, conditioning_2)}


class ConditioningAverage(Node):
    # ComfyUI's display-name table spells this key with a trailing space, so its display name is the class name
    DISPLAY_NAME = "ConditioningAverage"
    CATEGORY = "conditioning"
    DESCRIPTION = ("Blend two prompts' encodings: conditioning_to * strength + conditioning_from * (1 - strength). "
                   "Only the first cond of conditioning_from is used.")
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        conditioning_to: Link["CONDITIONING"] = Field(description="the conditioning to blend into (keeps its area)")
        conditioning_from: Link["CONDITIONING"] = Field(description="the conditioning blended in (its first cond)")
        conditioning_to_strength: float = Field(1.0, ge=0.0, le=1.0, description="the share of conditioning_to")

    def run(self, ctx: RunContext, conditioning_to, conditioning_from, conditioning_to_strength):
        return {"CONDITIONING": cond.average(conditioning_to, conditioning_from, conditioning_to_strength)}


class ConditioningConcat(Node):
    DISPLAY_NAME = "Conditioning (Concat)"
    CATEGORY = "conditioning"
    DESCRIPTION = ("Append the first cond of conditioning_from to each cond of conditioning_to along the tokens: "
                   "the model attends to both prompts at once.")
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        conditioning_to: Link["CONDITIONING"] = Field(description="the conditioning to extend (keeps its area)")
        conditioning_from: Link["CONDITIONING"] = Field(description="the conditioning appended (its first cond)")

    def run(self, ctx: RunContext, conditioning_to, conditioning_from):
        return {"CONDITIONING": cond.concat(conditioning_to, conditioning_from)}


class ConditioningSetArea(Node):
    DISPLAY_NAME = "Conditioning (Set Area)"
    CATEGORY = "conditioning"
    DESCRIPTION = ("Limit the conditioning to a rectangle of the picture (in pixels, counted in latent cells of 8), "
                   "weighted by strength against the other conditionings there; its edges fade into the rest.")
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        conditioning: Link["CONDITIONING"] = Field(description="the conditioning to place")
        width: int = Field(64, ge=64, le=MAX_RESOLUTION, description="the area's width in pixels",
                            json_schema_extra=PIXEL_STEP)
        height: int = Field(64, ge=64, le=MAX_RESOLUTION, description="the area's height in pixels",
                             json_schema_extra=PIXEL_STEP)
        x: int = Field(0, ge=0, le=MAX_RESOLUTION, description="the area's left edge in pixels",
                        json_schema_extra=PIXEL_STEP)
        y: int = Field(0, ge=0, le=MAX_RESOLUTION, description="the area's top edge in pixels",
                        json_schema_extra=PIXEL_STEP)
        strength: float = Field(1.0, ge=0.0, le=10.0, description="its weight against the other conditionings")

    def run(self, ctx: RunContext, conditioning, width, height, x, y, strength):
        return {"CONDITIONING": cond.set_area_in_pixels(conditioning, width, height, x, y, strength)}


class ConditioningSetAreaPercentage(Node):
    DISPLAY_NAME = "Conditioning (Set Area with Percentage)"
    CATEGORY = "conditioning"
    DESCRIPTION = "ConditioningSetArea with the rectangle given as fractions of the picture's width and height."
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        conditioning: Link["CONDITIONING"] = Field(description="the conditioning to place")
        width: float = Field(1.0, ge=0.0, le=1.0, description="the area's width, as a fraction of the picture's")
        height: float = Field(1.0, ge=0.0, le=1.0, description="the area's height, as a fraction of the picture's")
        x: float = Field(0.0, ge=0.0, le=1.0, description="the area's left edge, as a fraction of the width")
        y: float = Field(0.0, ge=0.0, le=1.0, description="the area's top edge, as a fraction of the height")
        strength: float = Field(1.0, ge=0.0, le=10.0, description="its weight against the other conditionings")

    def run(self, ctx: RunContext, conditioning, width, height, x, y, strength):
        return {"CONDITIONING": cond.set_area(conditioning, cond.AreaFraction(height, width, y, x), strength)}


class ConditioningSetMask(Node):
    DISPLAY_NAME = "Conditioning (Set Mask)"
    CATEGORY = "conditioning"
    DESCRIPTION = ("Limit the conditioning to a mask's region (weighted by the mask times strength). \"mask bounds\" "
                   "shows the model only the mask's bounding box, as an area prompt.")
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        conditioning: Link["CONDITIONING"] = Field(description="the conditioning to mask")
        mask: Link["MASK"] = Field(description="where it acts (1) and where not (0), any resolution")
        strength: float = Field(1.0, ge=0.0, le=10.0, description="its weight against the other conditionings")
        set_cond_area: Literal["default", "mask bounds"] = Field(
            "default", description="default: the model sees the whole picture; mask bounds: only the mask's box")

    def run(self, ctx: RunContext, conditioning, mask, strength, set_cond_area):
        return {"CONDITIONING": cond.set_mask(conditioning, mask, strength, set_cond_area == "mask bounds")}


class ConditioningZeroOut(Node):
    CATEGORY = "advanced/conditioning"
    DESCRIPTION = "The same conditioning with every encoding (and pooled output) set to zero, areas kept."
    OUTPUTS = {"CONDITIONING": "CONDITIONING"}

    class Inputs(NodeInputs):
        conditioning: Link["CONDITIONING"] = Field(description="the conditioning to zero")

    def run(self, ctx: RunContext, conditioning):
        return {"CONDITIONING": cond.zero_out(conditioning)}


NODES = [CLIPEncode, CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, CLIPSetLastLayer,
         ConditioningCombine, ConditioningAverage, ConditioningConcat, ConditioningSetArea,
         ConditioningSetAreaPercentage, ConditioningSetMask, ConditioningZeroOut]
