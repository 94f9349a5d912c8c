"""Runs validated workflows: plan, cache, execute in order, report, interrupt.

The executor knows nodes only through the registry and the `Node` base class; nothing here knows about Stable
Diffusion. One run at a time per executor; `interrupt()` may be called from any thread.

Caching: every node gets a signature, the hash of (node type, constant inputs, the signatures of the nodes it links
from, the node's `fingerprint` of outside state such as a checkpoint file's path, size and mtime). Outputs are kept
under that signature in an LRU cache bounded by a memory budget. A node whose signature is cached is not run, and
the nodes upstream of it are not run either unless something else needs them. Output nodes are cached like any
other: re-running an unchanged workflow writes nothing new (the run's result still lists the earlier files).
"""

from __future__ import annotations

import hashlib
import json
import threading
import traceback
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar

import networkx as nx

from nodegraph.formats import validate_workflow
from nodegraph.nodes import UI_KEY, Environment, Interrupted, NodeRegistry, RunContext, builtin_registry
from nodegraph.workflow import PlannedNode, ValidWorkflow

__all__ = ["Executor", "RunResult", "NodeFailed", "Interrupted", "OutputCache", "estimate_bytes", "Event",
           "NodeWarning"]

DEFAULT_CACHE_BUDGET = 8 * 2**30  # bytes; an SD 1.x checkpoint is ~2 GiB in bf16/fp16 and ~4 GiB in fp32


# --- events -----------------------------------------------------------------------------------------------------
# Both faces (the CLI's progress bars, the server's websocket) consume these through one callable: on_event(event).


@dataclass(frozen=True)
class Event:
    type: ClassVar[str]
    run_id: str

    def to_dict(self) -> dict:
        """{"type": ..., "data": {...}}: JSON-able (a progress preview image is left out; send it separately)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "preview"}
        return {"type": self.type, "data": data}


@dataclass(frozen=True)
class ExecutionStart(Event):
    type: ClassVar[str] = "execution_start"


@dataclass(frozen=True)
class ExecutionCached(Event):
    type: ClassVar[str] = "execution_cached"
    nodes: list[str] = field(default_factory=list)  # the run's nodes whose outputs are cached (used or not)


@dataclass(frozen=True)
class Executing(Event):
    type: ClassVar[str] = "executing"
    node_id: str = ""
    node_type: str = ""


@dataclass(frozen=True)
class Progress(Event):
    type: ClassVar[str] = "progress"
    node_id: str = ""
    step: int = 0
    total: int = 0
    preview: Any = None  # a small PIL RGB image of the work in progress, or None


@dataclass(frozen=True)
class NodeWarning(Event):
    type: ClassVar[str] = "warning"
    node_id: str = ""
    node_type: str = ""
    message: str = ""  # e.g. LoRA keys that match nothing, an embedding that is not there


@dataclass(frozen=True)
class Executed(Event):
    type: ClassVar[str] = "executed"
    node_id: str = ""
    node_type: str = ""
    output: dict = field(default_factory=dict)  # the node's "ui" summary, e.g. {"images": [{filename, ...}]}


@dataclass(frozen=True)
class ExecutionError(Event):
    type: ClassVar[str] = "execution_error"
    node_id: str = ""
    node_type: str = ""
    message: str = ""
    traceback: str = ""


@dataclass(frozen=True)
class ExecutionInterrupted(Event):
    type: ClassVar[str] = "execution_interrupted"
    node_id: str | None = None  # the node that was running or about to run


@dataclass(frozen=True)
class ExecutionSuccess(Event):
    type: ClassVar[str] = "execution_success"
    outputs: dict = field(default_factory=dict)  # output node id -> its "ui" summary (also for cached output nodes)


Listener = Callable[[Event], None]


class NodeFailed(Exception):
    """A node raised while running (or while its signature was computed); the executor stays usable."""

    def __init__(self, node_id: str, node_type: str, message: str, traceback_text: str = ""):
        super().__init__(f"node {node_id!r} ({node_type}) failed: {message}")
        self.node_id, self.node_type, self.message, self.traceback = node_id, node_type, message, traceback_text


@dataclass
class RunResult:
    run_id: str
    outputs: dict[str, dict]  # output node id -> "ui" summary
    executed: list[str]  # node ids that ran, in order
    cached: list[str]  # node ids whose cached outputs were used

    def to_dict(self) -> dict:
        return asdict(self)


# --- signatures and the cache -----------------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def node_signature(node: PlannedNode, upstream: dict[str, str], env: Environment) -> str:
    payload = {
        "type": node.node_class.TYPE,
        "constants": node.constants,
        "links": {name: [upstream[source], output] for name, (source, output) in node.links.items()},
        "fingerprint": node.node_class.fingerprint(env, node.constants),
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def tensor_blocks(value: Any, _seen: set | None = None, _depth: int = 0, _out: dict | None = None) -> dict[Any, int]:
    """The memory blocks a node's outputs hold, as {block key: bytes}: tensor storages, module parameters and buffers,
    containers walked. Two outputs holding the same tensor (a LoRA'd model shares every unpatched weight with its
    checkpoint) name the same block, so the cache counts it once.

    Duck-typed so the executor needs no torch import; each object is visited once however often it is referenced
    (LoadCheckpoint hands out one model under three names).
    """
    seen = set() if _seen is None else _seen
    out = {} if _out is None else _out
    if id(value) in seen or _depth > 8 or value is None or isinstance(value, (bool, int, float)):
        return out
    seen.add(id(value))
    if callable(getattr(value, "element_size", None)) and callable(getattr(value, "numel", None)):
        out[_storage_key(value)] = value.numel() * value.element_size()
    elif callable(getattr(value, "parameters", None)) and callable(getattr(value, "buffers", None)):
        for tensor in [*value.parameters(), *value.buffers()]:
            tensor_blocks(tensor, seen, _depth + 1, out)
    elif isinstance(value, (str, bytes, bytearray)):
        out[id(value)] = len(value)
    elif isinstance(value, dict):
        for item in value.values():
            tensor_blocks(item, seen, _depth + 1, out)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            tensor_blocks(item, seen, _depth + 1, out)
    elif isinstance(getattr(value, "nbytes", None), int):
        out[id(value)] = value.nbytes
    elif hasattr(value, "getbands") and hasattr(value, "size"):  # a PIL image
        out[id(value)] = value.size[0] * value.size[1] * len(value.getbands())
    elif hasattr(value, "__dict__"):  # e.g. the loaded checkpoint: a plain object holding modules
        for item in vars(value).values():
            tensor_blocks(item, seen, _depth + 1, out)
    return out


def _storage_key(tensor) -> Any:
    """Tensors that view one storage share a key; opaque ones (oneDNN-packed weights) are keyed by themselves."""
    try:
        return ("storage", tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, AttributeError):
        return ("tensor", id(tensor))


def estimate_bytes(value: Any) -> int:
    """Rough memory held by a node's outputs (each block counted once)."""
    return sum(tensor_blocks(value).values())


class OutputCache:
    """Node outputs by signature, least recently used evicted first once the total passes `budget_bytes`.

    The total counts each memory block once, however many entries hold it: a LoRA'd model adds only its patched
    weights to the checkpoint it was made from. An entry's blocks stay referenced (and counted) as long as it is kept.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, tuple[dict, list]] = OrderedDict()  # signature -> (outputs, block keys)
        self._blocks: dict[Any, list[int]] = {}  # block key -> [bytes, entries holding it]
        self.total_bytes = 0

    def __contains__(self, signature: str) -> bool:
        return signature in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, signature: str) -> dict | None:
        entry = self._entries.get(signature)
        if entry is None:
            return None
        self._entries.move_to_end(signature)
        return entry[0]

    def put(self, signature: str, outputs: dict) -> bool:
        """Keep `outputs`, evicting the least recently used; False if they alone exceed the budget (not kept)."""
        self.discard(signature)
        blocks = tensor_blocks(outputs)
        if sum(blocks.values()) > self.budget_bytes:
            return False
        for key, size in blocks.items():
            held = self._blocks.setdefault(key, [size, 0])
            if held[1] == 0:
                self.total_bytes += size
            held[1] += 1
        self._entries[signature] = (outputs, list(blocks))
        while self.total_bytes > self.budget_bytes and len(self._entries) > 1:
            self.discard(next(iter(self._entries)))
        return True

    def discard(self, signature: str) -> None:
        entry = self._entries.pop(signature, None)
        if entry is None:
            return
        for key in entry[1]:
            held = self._blocks[key]
            held[1] -= 1
            if held[1] == 0:
                self.total_bytes -= held[0]
                del self._blocks[key]

    def clear(self) -> None:
        self._entries.clear()
        self._blocks.clear()
        self.total_bytes = 0


# --- the executor -----------------------------------------------------------------------------------------------


class Executor:
    def __init__(self, env: Environment | None = None, registry: NodeRegistry | None = None,
                 cache_budget_bytes: int = DEFAULT_CACHE_BUDGET):
        self.env = env or Environment()
        self.registry = registry or builtin_registry()
        self.cache = OutputCache(cache_budget_bytes)
        self._interrupt = threading.Event()
        self._run_lock = threading.Lock()

    def validate(self, workflow: dict) -> ValidWorkflow:
        """The runnable form of `workflow` in any format (native, ComfyUI's API prompt or its UI file); raises
        InvalidWorkflow listing every problem, with node ids as the workflow has them."""
        return validate_workflow(workflow, self.registry, self.env)

    def interrupt(self) -> None:
        """Stop the current run at the next node boundary or sampler step (it raises Interrupted)."""
        self._interrupt.set()

    def run(self, workflow: dict | ValidWorkflow, on_event: Listener | None = None, run_id: str | None = None,
            extra_data: dict | None = None, targets: list[str] | None = None) -> RunResult:
        """Run what the workflow's output nodes need. Raises InvalidWorkflow (before anything runs), NodeFailed,
        or Interrupted; events go to `on_event` as they happen.

        `extra_data` is ComfyUI's (its "extra_pnginfo" goes into saved PNGs); `targets` limits the run to these
        output nodes (ComfyUI's partial_execution_targets)."""
        valid = workflow if isinstance(workflow, ValidWorkflow) else self.validate(workflow)
        extra_pnginfo = (extra_data or {}).get("extra_pnginfo")
        extra_pnginfo = extra_pnginfo if isinstance(extra_pnginfo, dict) else None
        emit = on_event or (lambda event: None)
        run_id = run_id or uuid.uuid4().hex
        with self._run_lock:
            self._interrupt.clear()  # an interrupt is meant for the run in progress, not the next one
            emit(ExecutionStart(run_id))
            to_run, results, signatures, ui_outputs = self._plan(valid, run_id, emit, targets)
            cached = list(results)
            # As ComfyUI reports it: every node of the run whose outputs are cached, used or not.
            emit(ExecutionCached(run_id, nodes=[node_id for node_id in signatures if signatures[node_id] in self.cache]))
            remaining_uses = {}
            for node_id in to_run:
                for source, _ in valid.nodes[node_id].links.values():
                    remaining_uses[source] = remaining_uses.get(source, 0) + 1

            for node_id in to_run:
                node = valid.nodes[node_id]
                if self._interrupt.is_set():
                    emit(ExecutionInterrupted(run_id, node_id=node_id))
                    raise Interrupted(f"interrupted before node {node_id!r}")
                inputs = dict(node.constants)
                for name, (source, output) in node.links.items():
                    inputs[name] = results[source][output]
                outputs = self._run_node(valid, node, inputs, run_id, emit, extra_pnginfo)
                self.cache.put(signatures[node_id], outputs)
                results[node_id] = outputs
                del inputs  # with the line below, upstream outputs can be freed as soon as no one needs them
                # Let go of upstream outputs nobody else in this run needs (the cache may still hold them).
                for source, _ in node.links.values():
                    remaining_uses[source] -= 1
                    if remaining_uses[source] == 0:
                        results.pop(source, None)
                if node.node_class.OUTPUT_NODE:
                    ui_outputs[node_id] = outputs.get(UI_KEY, {})
                emit(Executed(run_id, node_id=node_id, node_type=node.node_class.TYPE,
                              output=outputs.get(UI_KEY, {})))

            emit(ExecutionSuccess(run_id, outputs=ui_outputs))
            return RunResult(run_id, outputs=ui_outputs, executed=to_run, cached=cached)

    def _plan(self, valid: ValidWorkflow, run_id: str, emit: Listener, targets: list[str] | None = None):
        """Which nodes must run (in order), and the cached outputs the run will use instead of running the rest."""
        outputs = valid.output_nodes
        if targets is not None:
            unknown = sorted(set(targets) - set(outputs))
            if unknown:
                raise ValueError(f"partial execution targets {unknown} are not output nodes of the workflow")
            outputs = [node_id for node_id in outputs if node_id in set(targets)]
        needed = set(outputs).union(*(nx.ancestors(valid.graph, node_id) for node_id in outputs))
        order = list(nx.lexicographical_topological_sort(valid.graph.subgraph(needed)))

        signatures: dict[str, str] = {}
        for node_id in order:
            node = valid.nodes[node_id]
            try:
                signatures[node_id] = node_signature(node, signatures, self.env)
            except Exception as error:  # e.g. a checkpoint file vanished after validation
                self._fail(node_id, node.node_class.TYPE, error, run_id, emit)

        # Walk back from the outputs: a cached node stops the walk, so its upstream runs only if another node needs it.
        required, cached = set(outputs), {}
        for node_id in reversed(order):
            if node_id not in required:
                continue
            hit = self.cache.get(signatures[node_id])
            if hit is not None:
                cached[node_id] = hit  # held for the whole run, so eviction during the run cannot lose it
            else:
                required.update(source for source, _ in valid.nodes[node_id].links.values())
        to_run = [node_id for node_id in order if node_id in required and node_id not in cached]
        results = {node_id: cached[node_id] for node_id in order if node_id in cached}
        ui_outputs = {node_id: results[node_id].get(UI_KEY, {}) for node_id in outputs if node_id in results}
        return to_run, results, signatures, ui_outputs

    def _run_node(self, valid: ValidWorkflow, node: PlannedNode, inputs: dict, run_id: str, emit: Listener,
                  extra_pnginfo: dict | None) -> dict:
        node_type = node.node_class.TYPE
        emit(Executing(run_id, node_id=node.id, node_type=node_type))

        def report(step: int, total: int, preview: Any) -> None:
            emit(Progress(run_id, node_id=node.id, step=step, total=total, preview=preview))

        def warn(message: str) -> None:
            emit(NodeWarning(run_id, node_id=node.id, node_type=node_type, message=str(message)))

        ctx = RunContext(self.env, node.id, valid.source, prompt=valid.prompt, extra_pnginfo=extra_pnginfo,
                         report=report, warn=warn, interrupt_flag=self._interrupt)
        try:
            outputs = node.node_class().run(ctx, **inputs)
            expected = set(node.node_class.OUTPUTS)
            if not isinstance(outputs, dict) or not expected <= set(outputs) <= expected | {UI_KEY}:
                got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
                raise TypeError(f"{node_type}.run returned {got}, expected a dict with {sorted(expected)}")
        except Interrupted:
            emit(ExecutionInterrupted(run_id, node_id=node.id))
            raise
        except Exception as error:
            self._fail(node.id, node_type, error, run_id, emit)
        return outputs

    @staticmethod
    def _fail(node_id: str, node_type: str, error: Exception, run_id: str, emit: Listener):
        message = f"{type(error).__name__}: {error}"
        trace = traceback.format_exc()
        emit(ExecutionError(run_id, node_id=node_id, node_type=node_type, message=message, traceback=trace))
        raise NodeFailed(node_id, node_type, message, trace) from error
