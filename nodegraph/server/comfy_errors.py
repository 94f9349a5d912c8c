"""Validation problems in ComfyUI's shape: {"error": {type, message, details, extra_info}, "node_errors": {node_id:
{"errors": [{type, message, details, extra_info}], "dependent_outputs": [...], "class_type"}}}.

Each of our issue codes becomes ComfyUI's error type for the same problem (required_input_missing,
value_bigger_than_max, ...); a code ComfyUI has no word for keeps ours. Every problem of a node is listed under its
id, as the submitted workflow names it; problems of the file as a whole, and the summary, go in "error".
"""

from dataclasses import dataclass, field
from typing import Any

from nodegraph.nodes import NodeRegistry
from nodegraph.workflow import WorkflowIssue

ERROR_TYPES = {
    "unknown_node_type": "missing_node_type",
    "missing_input": "required_input_missing",
    "bad_link": "bad_linked_input",
    "unknown_link_node": "bad_linked_input",
    "unknown_link_output": "bad_linked_input",
    "socket_mismatch": "return_type_mismatch",
    "wrong_type": "invalid_input_type",
    "not_in_choices": "value_not_in_list",
    "invalid_value": "custom_validation_failed",
    "cycle": "dependency_cycle",
    "over_limit": "value_bigger_than_max",  # this server's limits are maxima too
    "bad_format": "invalid_prompt",
    "unreadable": "invalid_prompt",
    "no_output": "prompt_no_outputs",
}


@dataclass
class SubmittedNode:
    """A node of the workflow as submitted, read leniently (it may be invalid): enough to report on it."""

    class_type: str | None
    title: str | None = None
    inputs: dict = field(default_factory=dict)
    sources: set = field(default_factory=set)  # ids of the nodes it links from
    output_node: bool = False


def prompt_error(kind: str, message: str, details: str = "", extra_info: dict | None = None) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def rejection(issues: list[WorkflowIssue], data: Any, registry: NodeRegistry) -> dict:
    """The 400 body of /prompt for a workflow with these problems."""
    nodes = submitted_nodes(data, registry)
    node_errors: dict[str, dict] = {}
    for issue in issues:
        if issue.node_id is None:
            continue
        node = nodes.get(issue.node_id, SubmittedNode(issue.node_type))
        entry = node_errors.setdefault(issue.node_id, {
            "errors": [], "dependent_outputs": dependent_outputs(issue.node_id, nodes),
            "class_type": node.class_type or issue.node_type})
        entry["errors"].append(node_error(issue, node, registry))
    return {"error": summary(issues, nodes, node_errors), "node_errors": node_errors}


def summary(issues: list[WorkflowIssue], nodes: dict[str, SubmittedNode], node_errors: dict) -> dict:
    whole = [issue for issue in issues if issue.node_id is None]
    if any(issue.code == "no_output" for issue in whole):
        return prompt_error("prompt_no_outputs", "Prompt has no outputs", "\n".join(i.message for i in whole))
    if whole:
        return prompt_error("invalid_prompt", "Invalid prompt", "\n".join(issue.message for issue in whole))
    missing = next((issue for issue in issues if issue.code == "unknown_node_type"), None)
    if missing is not None:
        node = nodes.get(missing.node_id, SubmittedNode(missing.node_type))
        name = node.title or node.class_type or f"ID #{missing.node_id}"
        return prompt_error("missing_node_type", f"Node '{name}' not found: {missing.message}",
                            f"Node ID '#{missing.node_id}'",
                            {"node_id": missing.node_id, "class_type": node.class_type, "node_title": node.title})
    lines = [f"{error['message']}: {error['details']}" for entry in node_errors.values() for error in entry["errors"]]
    return prompt_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines))


def node_error(issue: WorkflowIssue, node: SubmittedNode, registry: NodeRegistry) -> dict:
    kind = ERROR_TYPES.get(issue.code, issue.code)
    extra: dict = {}
    if issue.input is not None:
        extra["input_name"] = issue.input
        if issue.input in node.inputs:
            extra["received_value"] = node.inputs[issue.input]
    if issue.code == "out_of_bounds":
        kind = bound_error_type(issue, extra.get("received_value"), registry)
    return {"type": kind, "message": issue.message, "details": issue.input or "", "extra_info": extra}


def bound_error_type(issue: WorkflowIssue, value: Any, registry: NodeRegistry) -> str:
    """value_smaller_than_min or value_bigger_than_max, as the value compares with the input's bounds."""
    node_class = (registry.get(issue.node_type) or registry.get_comfy(issue.node_type)) if issue.node_type else None
    spec = node_class.input_specs().get(issue.input) if node_class else None
    if spec is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.minimum is not None and (value < spec.minimum or (spec.minimum_exclusive and value == spec.minimum)):
            return "value_smaller_than_min"
        if spec.maximum is not None and value > spec.maximum:
            return "value_bigger_than_max"
        return "value_not_multiple_of_step"  # within bounds: the step (multiple_of) it is off
    return "value_out_of_range"


def dependent_outputs(node_id: str, nodes: dict[str, SubmittedNode]) -> list[str]:
    """The output nodes that need `node_id`: itself if it is one, and those downstream of it."""
    consumers: dict[str, set] = {}
    for target, node in nodes.items():
        for source in node.sources:
            consumers.setdefault(source, set()).add(target)
    seen, todo = {node_id}, [node_id]
    while todo:
        for consumer in consumers.get(todo.pop(), ()):
            if consumer not in seen:
                seen.add(consumer)
                todo.append(consumer)
    return sorted(n for n in seen if n in nodes and nodes[n].output_node)


# --- reading a submitted workflow, valid or not -----------------------------------------------------------------


def submitted_nodes(data: Any, registry: NodeRegistry) -> dict[str, SubmittedNode]:
    """The nodes of `data` in whichever format it came (native, ComfyUI's API or UI), by their ids as strings."""
    if not isinstance(data, dict):
        return {}
    if isinstance(data.get("nodes"), dict):  # native
        nodes = {}
        for node_id, entry in data["nodes"].items():
            entry = entry if isinstance(entry, dict) else {}
            node_class = registry.get(entry.get("type")) if isinstance(entry.get("type"), str) else None
            inputs = entry.get("inputs") if isinstance(entry.get("inputs"), dict) else {}
            nodes[str(node_id)] = SubmittedNode(entry.get("type"), None, inputs, link_sources(inputs, str),
                                                bool(node_class and node_class.OUTPUT_NODE))
        return nodes
    if isinstance(data.get("nodes"), list):
        return ui_nodes(data, registry)
    nodes = {}
    for node_id, entry in data.items():  # ComfyUI's API format
        entry = entry if isinstance(entry, dict) else {}
        class_type = entry.get("class_type") if isinstance(entry.get("class_type"), str) else None
        node_class = registry.get_comfy(class_type) if class_type else None
        inputs = entry.get("inputs") if isinstance(entry.get("inputs"), dict) else {}
        meta = entry.get("_meta") if isinstance(entry.get("_meta"), dict) else {}
        nodes[str(node_id)] = SubmittedNode(class_type, meta.get("title"), inputs, link_sources(inputs, int),
                                            bool(node_class and node_class.OUTPUT_NODE))
    return nodes


def link_sources(inputs: dict, slot_type: type) -> set:
    return {str(value[0]) for value in inputs.values() if isinstance(value, list) and len(value) == 2
            and isinstance(value[0], (str, int)) and isinstance(value[1], slot_type)}


def ui_nodes(data: dict, registry: NodeRegistry) -> dict[str, SubmittedNode]:
    """ComfyUI's UI (litegraph) format: links are [id, origin, origin_slot, target, target_slot, type] (version
    0.4) or objects (version 1). Values come from the converted form when the formats package can read the file."""
    values = {}
    try:
        from nodegraph.formats import to_native

        values = {str(k): v.get("inputs", {}) for k, v in to_native(data, registry).native.get("nodes", {}).items()}
    except Exception:  # an unreadable file: its problems are reported anyway, without the values
        pass
    nodes = {}
    for entry in data["nodes"]:
        if isinstance(entry, dict) and "id" in entry:
            node_type = entry.get("type") if isinstance(entry.get("type"), str) else None
            node_class = registry.get_comfy(node_type) if node_type else None
            nodes[str(entry["id"])] = SubmittedNode(node_type, entry.get("title"), values.get(str(entry["id"]), {}),
                                                    set(), bool(node_class and node_class.OUTPUT_NODE))
    for link in data.get("links") or []:
        if isinstance(link, list) and len(link) >= 4:
            origin, target = link[1], link[3]
        elif isinstance(link, dict):
            origin, target = link.get("origin_id"), link.get("target_id")
        else:
            continue
        if str(target) in nodes:
            nodes[str(target)].sources.add(str(origin))
    return nodes
