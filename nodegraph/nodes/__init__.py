"""Nodes: the base class, the registry, and what a node sees while it runs.

A node is a small class. It declares its inputs as a pydantic model (constants with defaults, bounds, choices and
descriptions; links typed by socket type), its outputs by name and socket type, and does its work in one `run`:

    class CLIPEncode(Node):
        CATEGORY = "conditioning"
        DESCRIPTION = "Encode a prompt with the checkpoint's text encoder."
        OUTPUTS = {"conditioning": "CONDITIONING"}

        class Inputs(NodeInputs):
            clip: Link["CLIP"] = Field(description="text encoder, from LoadCheckpoint")
            text: str = Field("", description="the prompt", json_schema_extra={"multiline": True})

        def run(self, ctx, clip, text):
            return {"conditioning": clip.encode_prompt([text])}

What travels along each socket type (every node producing or consuming it keeps to this):
    MODEL, CLIP, VAE   the loaded checkpoint object from `nodegraph.sd.load_checkpoint`; LoadCheckpoint hands the same
                       object out under all three, and each consumer uses the part it needs (unet, text encoder, vae).
    CONDITIONING       a tuple of `nodegraph.sd.conditioning.Cond` (ComfyUI's list of [tensor, {options}]): each a
                       float32 CPU context [B, T, C] of text-encoder states with its area, mask and strength.
    LATENT             a `Latent`: samples, a float32 CPU tensor [B, 4, H/8, W/8] in raw VAE space (unscaled: the
                       sampler applies latent_scale on the way in and out, so latents stay portable between models),
                       with an optional noise_mask (inpainting) and batch_index (ComfyUI's latent dict).
    IMAGE              float32 CPU tensor [B, 3, H, W] with values in [0, 1].
    MASK               float32 CPU tensor [B, H, W] with values in [0, 1] (1 = the region to change).
    SAMPLER            a `nodegraph.sd.sampling.Sampler` (a step rule by ComfyUI's name).
    SIGMAS             float32 CPU tensor [N] of decreasing noise levels to sample along (N - 1 steps).
Other upper-case socket names are allowed (a node family may bring its own); a link only connects equal types.

`run` returns a dict with one entry per declared output. It may add a "ui" entry: a small JSON-able summary of
what the node produced for people (SaveImage: the files it wrote), sent with the "executed" event.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import tempfile
import threading
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from nodegraph.extra_model_paths import ExtraModelFolder

SOCKET_TYPES = ("MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "SAMPLER", "SIGMAS")
BUILTIN_MODULES = ("loaders", "conditioning", "latent", "vae", "latent_files", "sampling", "sigmas", "image",
                   "image_ops", "mask", "lora", "model_sampling")
UI_KEY = "ui"


@dataclass(frozen=True)
class Latent:
    """What travels along a LATENT socket: ComfyUI's latent dict {"samples", "noise_mask"?, "batch_index"?}."""

    samples: Any  # float32 CPU tensor [B, 4, h, w], raw VAE space
    noise_mask: Any = None  # float32 tensor [B or 1, H, W] (any resolution; 1 = repaint), or None: change everything
    batch_index: tuple[int, ...] | None = None  # which seed-noise index each item takes (LatentFromBatch keeps it)

    def replace(self, **changes) -> "Latent":
        return dataclasses.replace(self, **changes)


class Interrupted(Exception):
    """Raised inside a run when someone asked it to stop; the executor turns it into an "interrupted" outcome."""


@dataclass(frozen=True)
class Environment:
    """Where files live and how models are placed: everything a node may depend on besides its inputs."""

    models_dir: Path = Path("models")
    input_dir: Path = Path("input")
    output_dir: Path = Path("output")
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "nodegraph")
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16 (see nodegraph/device.py for what auto picks)
    # More model folders, from ComfyUI extra_model_paths.yaml files (--extra-model-paths), in the files' order;
    # nodegraph.model_folders.model_roots puts them after (is_default: before) the models folder's own.
    extra_model_paths: tuple[ExtraModelFolder, ...] = ()
    allow_pickled_models: bool = False  # also offer .ckpt/.pt/.bin/.pth models, read with torch's weights_only

    @property
    def checkpoints_dir(self) -> Path:
        """The models folder's own checkpoints folder (model_folders.model_roots(env, "checkpoints") has them all)."""
        return Path(self.models_dir) / "checkpoints"


@dataclass
class RunContext:
    """What a running node may use besides its inputs."""

    env: Environment
    node_id: str
    workflow: dict  # the workflow being run, as submitted (our SaveImage embeds it in its PNGs)
    prompt: dict = field(default_factory=dict)  # the same in ComfyUI's API format (ComfyUI's SaveImage embeds it)
    extra_pnginfo: dict | None = None  # ComfyUI's extra_data.extra_pnginfo: more PNG text chunks, e.g. "workflow"
    report: Callable[[int, int, Any], None] = lambda step, total, preview: None
    warn: Callable[[str], None] = lambda message: None  # something the user should see that does not stop the run
    interrupt_flag: threading.Event = field(default_factory=threading.Event)

    def check_interrupt(self) -> None:
        if self.interrupt_flag.is_set():
            raise Interrupted(f"interrupted in node {self.node_id!r}")

    def report_progress(self, step: int, total: int, preview: Any = None) -> None:
        """Step `step` of `total` is done; `preview` is an optional small PIL image. A run can stop here."""
        self.check_interrupt()
        self.report(step, total, preview)


# --- declaring inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Socket:
    """Marks an input as a link from another node's output of this socket type."""

    type: str


class Link:
    """`clip: Link["CLIP"]` declares an input that must be linked to a CLIP output."""

    def __class_getitem__(cls, socket_type: str):
        return Annotated[Any, Socket(socket_type)]


@dataclass(frozen=True)
class Choices:
    """Marks a string input whose allowed values are computed from the environment (e.g. files in a folder)."""

    source: Callable[[Environment], list[str]]
    folder: Callable[[Environment], Path] | None = None  # where the choices are files, for error messages


class NodeInputs(BaseModel):
    """Base of every node's `Inputs`: strict types (an int where a string is expected is an error, not coerced).

    Validation passes {"env": Environment} as pydantic's validation context, for checks that need the folders.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


_CONSTANT_TYPES = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}


@dataclass(frozen=True)
class InputSpec:
    """One declared input, flattened from the pydantic field: what validation, listings and the editor need."""

    name: str
    kind: Literal["link", "constant"]
    type: str  # a socket type for links; INT, FLOAT, STRING or BOOLEAN for constants
    required: bool
    default: Any = None
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    minimum_exclusive: bool = False
    multiple_of: float | None = None
    choices: tuple | None = None  # fixed choices
    choices_from: Choices | None = None  # choices that depend on the environment
    multiline: bool = False
    control_after_generate: bool = False  # a seed: ComfyUI's UI files keep a "randomize"/"fixed" value after it
    image_upload: bool = False  # LoadImage's file: ComfyUI's UI files keep an "image" upload value after it
    optional: bool = False  # listed under ComfyUI's input.optional instead of input.required
    step: float | None = None  # the editor's increment where it is only a hint (multiple_of is enforced)

    def allowed_choices(self, env: Environment) -> list | None:
        if self.choices_from is not None:
            return list(self.choices_from.source(env))
        return list(self.choices) if self.choices is not None else None

    def expectation(self, env: Environment | None = None) -> str:
        """What a valid value looks like, in words, for error messages."""
        if self.kind == "link":
            return f"a link [node_id, output_name] to a {self.type} output"
        choices = self.allowed_choices(env) if env is not None else self.choices
        if choices is not None:
            folder = self.choices_from.folder(env) if env and self.choices_from and self.choices_from.folder else None
            if not choices:
                return f"a file in {folder}, but there is none" if folder else "one of the choices, but there are none"
            shown = ", ".join(repr(c) for c in choices[:20]) + (", ..." if len(choices) > 20 else "")
            return f"one of {shown}" + (f" (files in {folder})" if folder else "")
        words = {"INT": "an integer", "FLOAT": "a number", "STRING": "a string", "BOOLEAN": "true or false"}[self.type]
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.minimum_exclusive else '>='} {self.minimum!r}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum!r}")
        if self.multiple_of is not None:
            bounds.append(f"a multiple of {self.multiple_of!r}")
        return words + (" " + ", ".join(bounds) if bounds else "")

    def describe(self, env: Environment) -> dict:
        """JSON-able description (served by the server's node listing)."""
        info: dict[str, Any] = {"kind": self.kind, "type": self.type, "required": self.required}
        if not self.required:
            info["default"] = self.default
        for key, value in (("min", self.minimum), ("max", self.maximum), ("multiple_of", self.multiple_of)):
            if value is not None:
                info[key] = value
        if self.minimum_exclusive:
            info["min_exclusive"] = True
        choices = self.allowed_choices(env)
        if choices is not None:
            info["choices"] = choices
        if self.multiline:
            info["multiline"] = True
        info["description"] = self.description
        return info


def _input_spec(name: str, field_info) -> InputSpec:
    metadata = list(field_info.metadata)
    socket = next((m for m in metadata if isinstance(m, Socket)), None)
    extra = field_info.json_schema_extra if isinstance(field_info.json_schema_extra, dict) else {}
    common = dict(
        name=name,
        required=field_info.is_required(),
        default=None if field_info.is_required() else field_info.default,
        description=field_info.description or "",
    )
    if socket is not None:
        return InputSpec(kind="link", type=socket.type, optional=bool(extra.get("optional")), **common)

    annotation = field_info.annotation
    choices = None
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        annotation = type(choices[0])
    if annotation not in _CONSTANT_TYPES:
        raise TypeError(f"input {name!r}: constants must be bool, int, float, str or a Literal, not {annotation!r}")
    bounds = {}
    for m in metadata:
        for attr, key in (("ge", "minimum"), ("gt", "minimum"), ("le", "maximum"), ("multiple_of", "multiple_of")):
            if getattr(m, attr, None) is not None:
                bounds[key] = getattr(m, attr)
        if getattr(m, "gt", None) is not None:
            bounds["minimum_exclusive"] = True
    dynamic = next((m for m in metadata if isinstance(m, Choices)), None)
    return InputSpec(
        kind="constant",
        type=_CONSTANT_TYPES[annotation],
        choices=choices,
        choices_from=dynamic,
        multiline=bool(extra.get("multiline")),
        control_after_generate=bool(extra.get("control_after_generate")),
        image_upload=bool(extra.get("image_upload")),
        optional=bool(extra.get("optional")),
        step=extra.get("step"),
        **bounds,
        **common,
    )


# --- the node base class --------------------------------------------------------------------------------------


class Node:
    """Base of every node. Subclasses set the class attributes below and implement `run`.

    Two namespaces: our native workflow files name a node by TYPE; ComfyUI's formats (API and UI) name it by
    COMFY_TYPE. Most nodes are the same in both. Where one of our nodes has a ComfyUI name with other inputs
    (VAEDecode, VAEEncode, SaveImage, LoadImage, ImageScale), ours sets COMFY_TYPE = None and ComfyUI's is a second,
    thin declaration over the same implementation, with TYPE "ComfyUI.<name>" and COMFY_TYPE "<name>".
    """

    TYPE: ClassVar[str]  # the name native workflow files use; defaults to the class name
    COMFY_TYPE: ClassVar[str | None]  # the class_type ComfyUI's formats use; defaults to TYPE; None: not there
    DISPLAY_NAME: ClassVar[str] = ""  # ComfyUI's display_name (its menus' title); defaults to TYPE
    NATIVE: ClassVar[bool] = False  # one of our own nodes (LoadCheckpoint, CLIPEncode, ...), not one of ComfyUI's
    CATEGORY: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    Inputs: ClassVar[type[NodeInputs]] = NodeInputs
    OUTPUTS: ClassVar[dict[str, str]] = {}  # output name -> socket type, in display order
    OUTPUT_NODE: ClassVar[bool] = False  # the executor runs what output nodes need, and nothing else

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.TYPE = cls.__dict__.get("TYPE", cls.__name__)
        cls.COMFY_TYPE = cls.__dict__.get("COMFY_TYPE", cls.TYPE)
        if not cls.__dict__.get("DISPLAY_NAME"):
            cls.DISPLAY_NAME = cls.COMFY_TYPE or cls.TYPE

    @classmethod
    @functools.cache
    def input_specs(cls) -> dict[str, InputSpec]:
        return {name: _input_spec(name, info) for name, info in cls.Inputs.model_fields.items()}

    @classmethod
    def fingerprint(cls, env: Environment, constants: dict[str, Any]) -> Any:
        """Extra, JSON-able ingredient of this node's cache signature for state outside the workflow.

        A node reading a file returns e.g. its (resolved path, size, mtime_ns), so a changed file is read again.
        """
        return None

    def run(self, ctx: RunContext, **inputs) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def describe(cls, env: Environment) -> dict:
        return {
            "type": cls.TYPE,
            "category": cls.CATEGORY,
            "description": cls.DESCRIPTION,
            "output_node": cls.OUTPUT_NODE,
            "inputs": {name: spec.describe(env) for name, spec in cls.input_specs().items()},
            "outputs": dict(cls.OUTPUTS),
        }


# --- the registry ---------------------------------------------------------------------------------------------


class NodeRegistry:
    """Node types by name. The built-ins come from `builtin_registry()`; tests build their own."""

    def __init__(self, nodes=()):
        self._nodes: dict[str, type[Node]] = {}
        self._comfy: dict[str, type[Node]] = {}  # ComfyUI's namespace: class_type -> node
        for node in nodes:
            self.add(node)

    def add(self, node: type[Node]) -> type[Node]:
        """Register a node class (usable as a decorator); a malformed declaration fails here, not at run time."""
        if not (isinstance(node, type) and issubclass(node, Node)):
            raise TypeError(f"{node!r} is not a Node subclass")
        if node.TYPE in self._nodes and self._nodes[node.TYPE] is not node:
            raise ValueError(f"node type {node.TYPE!r} is already registered")
        if not (isinstance(node.Inputs, type) and issubclass(node.Inputs, NodeInputs)):
            raise TypeError(f"{node.TYPE}.Inputs must subclass NodeInputs")
        if UI_KEY in node.OUTPUTS or not all(isinstance(t, str) and t.isupper() for t in node.OUTPUTS.values()):
            raise TypeError(f"{node.TYPE}.OUTPUTS must map names (not {UI_KEY!r}) to upper-case socket types")
        if node.run is Node.run:
            raise TypeError(f"{node.TYPE} does not implement run")
        if node.COMFY_TYPE is not None and self._comfy.get(node.COMFY_TYPE, node) is not node:
            raise ValueError(f"ComfyUI class_type {node.COMFY_TYPE!r} is already registered")
        node.input_specs()  # raises on an undeclarable input
        self._nodes[node.TYPE] = node
        if node.COMFY_TYPE is not None:
            self._comfy[node.COMFY_TYPE] = node
        return node

    def get(self, type_name: str) -> type[Node] | None:
        """A node by the name native workflow files use."""
        return self._nodes.get(type_name)

    def get_comfy(self, class_type: str) -> type[Node] | None:
        """A node by the class_type ComfyUI's API and UI formats use."""
        return self._comfy.get(class_type)

    def comfy_nodes(self) -> list[type[Node]]:
        """The nodes of ComfyUI's namespace, sorted by class_type."""
        return [self._comfy[name] for name in sorted(self._comfy)]

    def __contains__(self, type_name: str) -> bool:
        return type_name in self._nodes

    def __iter__(self):
        return iter(sorted(self._nodes.values(), key=lambda n: (n.CATEGORY, n.TYPE)))

    def describe(self, env: Environment) -> dict[str, dict]:
        """Every node as JSON-able data: {type: {type, category, description, output_node, inputs, outputs}}."""
        return {node.TYPE: node.describe(env) for node in self}


@functools.cache
def builtin_registry() -> NodeRegistry:
    """The built-in nodes (each module under nodegraph/nodes lists its classes in NODES)."""
    registry = NodeRegistry()
    for module_name in BUILTIN_MODULES:
        module: types.ModuleType = importlib.import_module(f"{__name__}.{module_name}")
        for node in module.NODES:
            registry.add(node)
    return registry
