"""ComfyUI's UI format (the litegraph workflow files its editor saves, version 0.4 and 1) to its API format, by the
rules of its frontend's graphToPrompt, so a file runs here as it would run there.

- Widget values: `widgets_values` lists a node's widgets in order (its constant inputs, required then optional);
  after a control_after_generate input comes a control value that is no input ("fixed", "randomize", ... or a
  legacy boolean), after an image_upload input an upload value ("image"). Null means the defaults; some newer
  files give a dict by name.
- Links: each input slot names its link id; the link gives the origin node and output slot. A widget converted to
  an input takes its link instead of its value.
- Bypassed nodes (mode 4) pass through the input of the type asked for (the same slot first, then the others);
  Reroutes pass their input through; muted nodes (mode 2) are left out, and so are the inputs linked to them.
- PrimitiveNode gives its value to the widgets it is linked to; Note and MarkdownNote are dropped; groups ignored.
- Subgraphs and legacy group nodes are refused, naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodegraph.nodes import Node, NodeRegistry
from nodegraph.workflow import WorkflowIssue

from nodegraph.formats.api import LITERAL_KEY

MUTED, BYPASSED = 2, 4  # litegraph's LGraphEventMode.NEVER and BYPASS
DROPPED_TYPES = {"Note", "MarkdownNote"}  # frontend-only nodes without sockets
CONTROL_VALUES = {"fixed", "randomize", "increment", "decrement"}


@dataclass
class UiConversion:
    prompt: dict  # the API form, as the frontend would queue it
    layout: dict[str, dict] = field(default_factory=dict)  # native ui.nodes: {id: {"pos", "randomize"?, "title"?}}
    issues: list[WorkflowIssue] = field(default_factory=list)
    quiet: set[tuple[str, str]] = field(default_factory=set)  # inputs left out whose problem is already reported


@dataclass(frozen=True)
class UiLink:
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int


class LinkProblem(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def ui_to_api(workflow: dict, registry: NodeRegistry) -> UiConversion:
    result = UiConversion(prompt={})
    graph = UiGraph(workflow, result.issues)
    refused = _refuse_unsupported(graph, workflow, result.issues)
    primitives = primitive_values(graph)
    for node_id, node in graph.nodes.items():
        frontend_only = node["type"] in DROPPED_TYPES or node["type"] in ("Reroute", "PrimitiveNode")
        if frontend_only or node_id in refused or node.get("mode") in (MUTED, BYPASSED):
            continue
        node_class = registry.get_comfy(node["type"])
        inputs, randomize = {}, []
        if node_class is not None:  # an unknown type keeps its links; the API stage reports the type
            values, randomize = widget_values(node, node_class)
            for name, (value, random) in primitives.get(node_id, {}).items():
                values[name] = value
                if random and name not in randomize:
                    randomize.append(name)
            inputs = {name: {LITERAL_KEY: v} if isinstance(v, list) else v for name, v in values.items()}
        inputs.update(_linked_inputs(graph, node_id, refused, result))
        title = node.get("title") or (node_class.DISPLAY_NAME if node_class else node["type"])
        result.prompt[node_id] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
        result.layout[node_id] = _layout(node, randomize)
    for entry in result.prompt.values():  # inputs linked to nodes that are not queued (muted) are dropped
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and value[0] not in result.prompt:
                del entry["inputs"][name]
    return result


def _linked_inputs(graph: UiGraph, node_id: str, refused: set[str], result: UiConversion) -> dict[str, list]:
    """The node's inputs fed by a real node, as API links [origin_id, origin_slot]."""
    node, linked = graph.nodes[node_id], {}
    for slot_index, slot in enumerate(items(node.get("inputs"))):
        if not isinstance(slot, dict) or slot.get("link") is None or not isinstance(slot.get("name"), str):
            continue
        try:
            origin = graph.resolve_input(node_id, slot_index, slot.get("type"), set())
        except LinkProblem as problem:
            result.issues.append(WorkflowIssue(problem.code, str(problem), node_id, node["type"], slot["name"]))
            result.quiet.add((node_id, slot["name"]))
            continue
        if origin is not None:
            linked[slot["name"]] = [origin[0], origin[1]]
            if origin[0] in refused:  # already reported there
                result.quiet.add((node_id, slot["name"]))
    return linked


# --- the file's graph ----------------------------------------------------------------------------------------


class UiGraph:
    """The nodes and links of a UI file, tolerant of both link layouts, and link resolution as graphToPrompt does."""

    def __init__(self, workflow: dict, issues: list[WorkflowIssue]):
        self.nodes: dict[str, dict] = {}
        for index, node in enumerate(items(workflow.get("nodes"))):
            if not isinstance(node, dict) or "id" not in node or not isinstance(node.get("type"), str):
                issues.append(WorkflowIssue("bad_format", f"nodes[{index}]: expected a node with an id and a type"))
                continue
            self.nodes[str(node["id"])] = node
        self.links: dict[Any, UiLink] = {}
        links = workflow.get("links")
        for index, link in enumerate(items(list(links.values()) if isinstance(links, dict) else links)):
            parsed = _parse_link(link)
            if parsed is None:
                issues.append(WorkflowIssue("bad_format", f"links[{index}]: expected [id, origin_id, origin_slot, "
                                                          f"target_id, target_slot, type], got {link!r:.80}"))
                continue
            self.links[parsed[0]] = parsed[1]

    def resolve_input(self, node_id: str, slot: int, target_type, visited: set) -> tuple[str, int] | None:
        """The (node, output slot) feeding input `slot` of a node, through reroutes and bypassed nodes; None when
        nothing real feeds it (unlinked, a PrimitiveNode, a bypass without a matching input)."""
        node = self.nodes[node_id]
        slots = items(node.get("inputs"))
        if not 0 <= slot < len(slots) or not isinstance(slots[slot], dict) or slots[slot].get("link") is None:
            return None
        link_id = slots[slot]["link"]
        link = self.link(link_id)
        if link is None:
            raise LinkProblem("bad_link", f"link {link_id} is not in the file's links")
        if link.origin_id not in self.nodes:
            raise LinkProblem("unknown_link_node", f"linked from node {link.origin_id}, which is not in the file")
        return self._resolve_output(link.origin_id, link.origin_slot, target_type or slots[slot].get("type"), visited)

    def _resolve_output(self, node_id: str, slot: int, target_type, visited: set) -> tuple[str, int] | None:
        if (node_id, slot) in visited:
            raise LinkProblem("cycle", f"links loop through node {node_id} (reroutes or bypassed nodes)")
        visited.add((node_id, slot))
        node = self.nodes[node_id]
        if node.get("mode") == BYPASSED:
            through = _bypass_slot(node, slot, target_type)
            return None if through < 0 else self.resolve_input(node_id, through, target_type, visited)
        if node["type"] == "Reroute":
            return self.resolve_input(node_id, 0, target_type, visited)
        if node["type"] == "PrimitiveNode" or node["type"] in DROPPED_TYPES:
            return None
        return node_id, slot

    def link(self, link_id) -> UiLink | None:
        return self.links.get(link_id) if isinstance(link_id, int) else None

    def link_targets(self, node_id: str) -> list[tuple[str, int]]:
        """(target node, input slot) of every link out of a node's first output, following Reroutes forward."""
        outputs = items(self.nodes[node_id].get("outputs"))
        targets = []
        for link_id in items(outputs[0].get("links")) if outputs and isinstance(outputs[0], dict) else []:
            link = self.link(link_id)
            if link is None or link.target_id not in self.nodes:
                continue
            if self.nodes[link.target_id]["type"] == "Reroute" and link.target_id != node_id:
                targets.extend(self.link_targets(link.target_id))
            else:
                targets.append((link.target_id, link.target_slot))
        return targets


def items(value) -> list:
    """A list field of the file, or none when it is something else (files are edited by hand and by scripts)."""
    return value if isinstance(value, list) else []


def _parse_link(link) -> tuple[Any, UiLink] | None:
    try:
        if isinstance(link, list) and len(link) >= 5:  # version 0.4
            link_id, origin_id, origin_slot, target_id, target_slot = link[:5]
        elif isinstance(link, dict):  # version 1
            link_id, origin_id, origin_slot = link["id"], link["origin_id"], link["origin_slot"]
            target_id, target_slot = link["target_id"], link["target_slot"]
        else:
            return None
        if not isinstance(link_id, int) or isinstance(link_id, bool):
            return None
        return link_id, UiLink(str(origin_id), int(origin_slot), str(target_id), int(target_slot))
    except (KeyError, TypeError, ValueError):
        return None


def _bypass_slot(node: dict, slot: int, target_type) -> int:
    """Which input of a bypassed node stands in for its output `slot` (the frontend's rule), or -1."""
    inputs = [item.get("type") if isinstance(item, dict) else None for item in items(node.get("inputs"))]
    outputs = items(node.get("outputs"))
    output_type = outputs[slot].get("type") if slot < len(outputs) and isinstance(outputs[slot], dict) else None
    if target_type in ("*", "", None):
        return slot if slot < len(inputs) else (0 if inputs else -1)
    if slot < len(inputs) and connects(inputs[slot], output_type) and connects(inputs[slot], target_type):
        return slot
    if target_type in inputs:
        return inputs.index(target_type)
    return next((i for i, kind in enumerate(inputs) if connects(kind, output_type) and connects(kind, target_type)),
                -1)


def connects(a, b) -> bool:
    """litegraph's isValidConnection: equal types, a wildcard, or comma lists that share a type (any case)."""
    if a in (None, "", "*", 0) or b in (None, "", "*", 0):
        return True
    a, b = str(a).lower(), str(b).lower()
    return a == b or bool(set(a.split(",")) & set(b.split(",")))


# --- widgets -------------------------------------------------------------------------------------------------


def widget_slots(node_class: type[Node]) -> list[tuple[str, str]]:
    """The node's widgets in `widgets_values` order: ("value" | "control" | "upload", input name)."""
    constants = [spec for spec in node_class.input_specs().values() if spec.kind == "constant"]
    slots = []
    for optional in (False, True):  # required first, each group in declared order
        for spec in (spec for spec in constants if spec.optional == optional):
            slots.append(("value", spec.name))
            if spec.control_after_generate:
                slots.append(("control", spec.name))
        if not optional:
            # ComfyUI's frontend adds the upload button as one more required input, so after all the others.
            slots += [("upload", spec.name) for spec in constants if spec.image_upload and not spec.optional]
    return slots


def is_control_value(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)


def widget_positions(values: list, node_class: type[Node]) -> dict[str, int]:
    """Where each input's value sits in a `widgets_values` list. A control slot holding no control value is taken
    as absent (files from before the control widget): the values after it then keep their places."""
    positions, index = {}, 0
    for kind, name in widget_slots(node_class):
        if kind == "value":
            positions[name] = index
            index += 1
        elif kind == "upload" or (index < len(values) and is_control_value(values[index])):
            positions[f"{kind}:{name}"] = index
            index += 1
    return positions


def widget_values(node: dict, node_class: type[Node]) -> tuple[dict[str, Any], list[str]]:
    """The node's constant inputs from its widgets_values (defaults where the file has none), and the inputs whose
    control value is "randomize"."""
    raw = node.get("widgets_values")
    specs = node_class.input_specs()
    values = {name: spec.default for name, spec in specs.items() if spec.kind == "constant" and not spec.required}
    randomize = []
    if isinstance(raw, dict):
        values.update({name: value for name, value in raw.items() if name in specs and specs[name].kind == "constant"})
    elif isinstance(raw, list):
        for key, index in widget_positions(raw, node_class).items():
            if index >= len(raw):
                continue
            if key.startswith("control:"):
                if raw[index] == "randomize" or raw[index] is True:  # the legacy toggle: true = randomize
                    randomize.append(key.removeprefix("control:"))
            elif not key.startswith("upload:"):
                values[key] = raw[index]
    return values, randomize


def primitive_values(graph: UiGraph) -> dict[str, dict[str, tuple[Any, bool]]]:
    """{target node: {widget name: (value, randomize)}} for every widget a PrimitiveNode feeds."""
    given: dict[str, dict[str, tuple[Any, bool]]] = {}
    for node_id, node in graph.nodes.items():
        raw = node.get("widgets_values")
        if node["type"] != "PrimitiveNode" or not isinstance(raw, list) or not raw:
            continue
        random = len(raw) > 1 and (raw[1] == "randomize" or raw[1] is True)
        for target_id, slot in graph.link_targets(node_id):
            slots = items(graph.nodes[target_id].get("inputs"))
            widget = slots[slot].get("widget") if 0 <= slot < len(slots) and isinstance(slots[slot], dict) else None
            if isinstance(widget, dict) and isinstance(widget.get("name"), str):
                given.setdefault(target_id, {})[widget["name"]] = (raw[0], random)
    return given


# --- what is refused, and the layout kept ---------------------------------------------------------------------


def _refuse_unsupported(graph: UiGraph, workflow: dict, issues: list[WorkflowIssue]) -> set[str]:
    definitions = workflow.get("definitions") if isinstance(workflow.get("definitions"), dict) else {}
    subgraphs = {sub["id"]: sub for sub in items(definitions.get("subgraphs"))
                 if isinstance(sub, dict) and isinstance(sub.get("id"), str)}
    extra = workflow.get("extra") if isinstance(workflow.get("extra"), dict) else {}
    group_nodes = extra.get("groupNodes") if isinstance(extra.get("groupNodes"), dict) else {}
    refused = set()
    for node_id, node in graph.nodes.items():
        kind = node["type"]
        if kind in subgraphs:
            name = subgraphs[kind].get("name") or kind
            message = (f"node {node_id} is a subgraph ({name!r}); nodegraph does not run subgraphs: unpack it in "
                       "ComfyUI (right-click > Unpack Subgraph) and save the workflow again")
        elif kind.startswith(("workflow>", "workflow/")) and kind[len("workflow>"):] in group_nodes:
            message = (f"node {node_id} is a group node ({kind!r}); nodegraph does not run group nodes: convert it "
                       "to nodes in ComfyUI and save the workflow again")
        else:
            continue
        if node.get("mode") in (MUTED, BYPASSED):
            continue  # never queued: nothing to refuse
        issues.append(WorkflowIssue("unsupported", message, node_id, kind))
        refused.add(node_id)
    return refused


def _layout(node: dict, randomize: list[str]) -> dict:
    entry: dict[str, Any] = {}
    pos = node.get("pos")
    if isinstance(pos, dict):  # some old files store {"0": x, "1": y}
        pos = [pos.get("0"), pos.get("1")]
    if isinstance(pos, (list, tuple)) and len(pos) >= 2 and all(isinstance(v, (int, float)) for v in pos[:2]):
        entry["pos"] = [pos[0], pos[1]]
    if randomize:
        entry["randomize"] = randomize
    if isinstance(node.get("title"), str) and node["title"]:
        entry["title"] = node["title"]
    return entry
