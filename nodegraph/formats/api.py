"""ComfyUI's API format (what its clients POST to /prompt and its PNGs carry as "prompt"), to and from ours.

    {node_id: {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0]}, "_meta": {"title": ...}}}

A list is a link [node_id, output_index]; a literal list is wrapped as {"__value__": [...]}. Class types are looked
up in the registry's ComfyUI namespace and become the native entry of that class's TYPE; output indexes become our
output names by the source class's OUTPUTS order. What ComfyUI's own validation lets through stays accepted: inputs
a node does not declare are ignored (newer frontends send some), an int for a FLOAT, a numeric string for an INT or
FLOAT. Problems are collected, never raised one by one, with node ids and class types as the file has them.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from nodegraph.nodes import InputSpec, Node, NodeRegistry
from nodegraph.workflow import WorkflowIssue, is_link

LITERAL_KEY = "__value__"


@dataclass
class ApiConversion:
    nodes: dict[str, dict]  # native node entries {"type", "inputs"}, by node id
    issues: list[WorkflowIssue] = field(default_factory=list)
    # Inputs left out because a problem was already reported for them (their node's validation should not say
    # "missing" again): (node_id, input name).
    quiet: set[tuple[str, str]] = field(default_factory=set)


def api_to_native(prompt: dict, registry: NodeRegistry) -> ApiConversion:
    conversion = ApiConversion(nodes={})
    prompt = {str(node_id): entry for node_id, entry in prompt.items()}  # Python callers may key nodes by int
    classes: dict[str, type[Node]] = {}
    for node_id, entry in prompt.items():
        problem = _entry_problem(entry)
        class_type = entry.get("class_type") if isinstance(entry, dict) else None
        class_type = class_type if isinstance(class_type, str) else None
        if problem:
            conversion.issues.append(WorkflowIssue("bad_format", problem, node_id, class_type))
            continue
        node_class = registry.get_comfy(class_type)
        if node_class is None:
            conversion.issues.append(WorkflowIssue("unknown_node_type", unknown_type_message(class_type, registry),
                                                   node_id, class_type))
            continue
        classes[node_id] = node_class

    for node_id, node_class in classes.items():
        entry = prompt[node_id]
        specs = node_class.input_specs()
        inputs = {}
        for name, value in (entry.get("inputs") or {}).items():
            spec = specs.get(name)
            if spec is None:
                continue  # ComfyUI validates declared inputs only and ignores the rest
            converted = _convert_input(node_id, entry["class_type"], spec, value, prompt, classes, conversion)
            if converted is not _LEFT_OUT:
                inputs[name] = converted
        conversion.nodes[node_id] = {"type": node_class.TYPE, "inputs": inputs}
    return conversion


def native_to_api(native: Any, registry: NodeRegistry) -> dict:
    """The API form of a native workflow, as ComfyUI's SaveImage embeds it (best effort: no validation here)."""
    nodes = native.get("nodes") if isinstance(native, dict) else None
    if not isinstance(nodes, dict):
        return {}
    layout = native.get("ui", {}).get("nodes", {}) if isinstance(native.get("ui"), dict) else {}
    prompt = {}
    for node_id, entry in nodes.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("inputs", {}), dict):
            continue
        node_class = registry.get(entry.get("type")) if isinstance(entry.get("type"), str) else None
        inputs = {}
        for name, value in entry.get("inputs", {}).items():
            if is_link(value):
                source = nodes.get(value[0])
                source_class = registry.get(source.get("type")) if isinstance(source, dict) else None
                outputs = list(source_class.OUTPUTS) if source_class else []
                inputs[name] = [value[0], outputs.index(value[1])] if value[1] in outputs else list(value)
            else:
                inputs[name] = {LITERAL_KEY: value} if isinstance(value, list) else value
        saved = layout.get(node_id) if isinstance(layout, dict) else None
        title = saved.get("title") if isinstance(saved, dict) else None
        class_type = (node_class.COMFY_TYPE or node_class.TYPE) if node_class else entry.get("type")
        prompt[str(node_id)] = {"inputs": inputs, "class_type": class_type,
                                "_meta": {"title": title or (node_class.DISPLAY_NAME if node_class else class_type)}}
    return prompt


def unknown_type_message(class_type: str, registry: NodeRegistry) -> str:
    known = [node.COMFY_TYPE for node in registry.comfy_nodes()]
    close = difflib.get_close_matches(class_type, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(name) for name in close)}?" if close else ""
    return (f"unknown node type {class_type!r}: nodegraph has no ComfyUI node of that class_type{hint} "
            f"(GET /object_info lists the {len(known)} it has)")


# --- one input -----------------------------------------------------------------------------------------------

_LEFT_OUT = object()


def _convert_input(node_id, class_type, spec: InputSpec, value, prompt, classes, conversion: ApiConversion):
    def refuse(code, message):
        conversion.issues.append(WorkflowIssue(code, message, node_id, class_type, spec.name))
        conversion.quiet.add((node_id, spec.name))
        return _LEFT_OUT

    if isinstance(value, list):  # ComfyUI reads every list as a link
        return _convert_link(spec, value, prompt, classes, refuse, conversion, node_id)
    if isinstance(value, dict) and LITERAL_KEY in value:
        value = value[LITERAL_KEY]
    if spec.kind == "link":
        return refuse("bad_link", f"expected a link [node_id, output_index] to a {spec.type} output, got {value!r}")
    return _coerce(spec, value)


def _convert_link(spec, value, prompt, classes, refuse, conversion, node_id):
    if len(value) != 2 or not _is_node_id(value[0]) or not _is_index(value[1]):
        return refuse("bad_link", f"a link is [node_id, output_index] (a string and an integer), got {value!r}")
    source_id, index = str(value[0]), value[1]
    if source_id not in classes:
        if source_id in prompt:  # its own problem is reported at that node
            conversion.quiet.add((node_id, spec.name))
            return _LEFT_OUT
        return refuse("unknown_link_node", f"links to node {source_id!r}, which is not in the prompt")
    source = classes[source_id]
    outputs = list(source.OUTPUTS.items())
    where = f"node {source_id!r} ({source.COMFY_TYPE or source.TYPE})"
    if not 0 <= index < len(outputs):
        listed = ", ".join(f"{i} {socket}" for i, (_, socket) in enumerate(outputs)) or "none"
        return refuse("unknown_link_output", f"{where} has no output {index}; its outputs: {listed}")
    name, socket = outputs[index]
    if spec.kind == "constant":
        return refuse("wrong_type", f"expected a constant, {spec.expectation()}, got a link to output {index} of "
                                    f"{where}; nodegraph takes this input as a value only")
    if socket != spec.type:
        return refuse("socket_mismatch",
                      f"expected a link to a {spec.type} output, but output {index} of {where} is {socket}")
    return [source_id, name]


def _coerce(spec: InputSpec, value):
    """ComfyUI's conversions where nothing is lost; anything else is left for validation to report."""
    if isinstance(value, bool):
        return value
    if spec.type == "INT":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return value
    if spec.type == "FLOAT":
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return value
            return number if math.isfinite(number) else value
    return value


def _entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return f'expected {{"class_type": ..., "inputs": {{...}}}}, got {type(entry).__name__} {entry!r:.60}'
    if "class_type" not in entry:
        return "the node has no class_type (the prompt may be damaged or come from a custom node)"
    if not isinstance(entry["class_type"], str):
        return f"class_type must be a string, got {entry['class_type']!r}"
    if not isinstance(entry.get("inputs", {}), dict):
        return f"inputs must be an object {{name: value}}, got {entry['inputs']!r:.60}"
    return None


def _is_node_id(value) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
