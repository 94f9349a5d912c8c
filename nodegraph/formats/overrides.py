"""`--set NODE.INPUT=VALUE` in each format's own terms: a native or API input, or a UI node's widget value
(node ids as the file has them). Each setter changes `data` in place and returns a problem in words, or None."""

from __future__ import annotations

import json
from typing import Any

from nodegraph.nodes import InputSpec, Node, NodeRegistry

from nodegraph.formats.ui import UiGraph, is_control_value, items, widget_positions, widget_slots


def parse_value(raw: str, spec: InputSpec | None) -> Any:
    """JSON when it parses (7, 7.5, true, ["4", 0]), else the text; a STRING input always takes the text."""
    if spec is not None and spec.kind == "constant" and spec.type == "STRING":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def set_native(data: Any, node_id: str, name: str, raw: str, registry: NodeRegistry) -> str | None:
    nodes = data.get("nodes") if isinstance(data, dict) else None
    node = nodes.get(node_id) if isinstance(nodes, dict) else None
    if not isinstance(node, dict) or not isinstance(node.get("inputs", {}), dict):
        return f"there is no node {node_id!r}"
    node_class = registry.get(node.get("type")) if isinstance(node.get("type"), str) else None
    node.setdefault("inputs", {})[name] = parse_value(raw, _spec(node_class, name))
    return None


def set_api(data: dict, node_id: str, name: str, raw: str, registry: NodeRegistry) -> str | None:
    node = data.get(node_id)
    if not isinstance(node, dict) or not isinstance(node.get("inputs", {}), dict):
        return f"there is no node {node_id!r}"
    class_type = node.get("class_type")
    node_class = registry.get_comfy(class_type) if isinstance(class_type, str) else None
    node.setdefault("inputs", {})[name] = parse_value(raw, _spec(node_class, name))
    return None


def set_ui(data: dict, node_id: str, name: str, raw: str, registry: NodeRegistry) -> str | None:
    graph = UiGraph(data, [])
    node = graph.nodes.get(node_id)
    if node is None:
        return f"there is no node {node_id!r}"
    node_class = registry.get_comfy(node["type"])
    if node_class is None:
        return f"node {node_id!r} is a {node['type']!r}, a node type nodegraph does not have"
    spec = node_class.input_specs().get(name)
    if spec is None or spec.kind != "constant":
        constants = [n for n, s in node_class.input_specs().items() if s.kind == "constant"]
        what = "is a link (connect it in the file)" if spec is not None else "is not an input of it"
        return f"{name!r} {what}; the values of {node['type']} are {', '.join(constants) or 'none'}"
    slots = items(node.get("inputs"))
    for index, slot in enumerate(slots):
        widget = slot.get("widget") if isinstance(slot, dict) else None
        if isinstance(widget, dict) and widget.get("name") == name and slot.get("link") is not None:
            return _set_feeding_primitive(graph, node_id, index, name, raw, spec)
    _set_widget(node, node_class, name, parse_value(raw, spec))
    return None


def _set_feeding_primitive(graph: UiGraph, node_id, slot, name, raw, spec) -> str | None:
    """A widget fed by a PrimitiveNode takes the primitive's value: set that instead."""
    link = graph.link(graph.nodes[node_id]["inputs"][slot]["link"])
    while link is not None and graph.nodes.get(link.origin_id, {}).get("type") == "Reroute":
        reroute_inputs = graph.nodes[link.origin_id].get("inputs") or [{}]
        link = graph.link(reroute_inputs[0].get("link") if isinstance(reroute_inputs[0], dict) else None)
    source = graph.nodes.get(link.origin_id) if link is not None else None
    if source is None or source["type"] != "PrimitiveNode":
        origin = f" from node {link.origin_id}" if link is not None else ""
        return f"{name!r} is fed by a link{origin}; set the value there"
    values = source.get("widgets_values")
    source["widgets_values"] = [parse_value(raw, spec)] + (values[1:] if isinstance(values, list) else [])
    return None


def _set_widget(node: dict, node_class: type[Node], name: str, value: Any) -> None:
    raw = node.get("widgets_values")
    if isinstance(raw, dict):
        raw[name] = value
        return
    values = list(raw) if isinstance(raw, list) else []
    positions = widget_positions(values, node_class)
    if positions[name] >= len(values):  # fill up to it with what the frontend writes for absent values
        specs = node_class.input_specs()
        filled = []
        for kind, slot_name in widget_slots(node_class):
            if kind == "value":
                filled.append(values[positions[slot_name]] if positions[slot_name] < len(values)
                              else specs[slot_name].default)
            elif kind == "control":
                position = positions.get(f"control:{slot_name}")
                filled.append(values[position] if position is not None and is_control_value(values[position])
                              else "fixed")
            else:
                position = positions.get(f"upload:{slot_name}")
                filled.append(values[position] if position is not None and position < len(values) else "image")
        values = filled
        positions = widget_positions(values, node_class)
    values[positions[name]] = value
    node["widgets_values"] = values


def _spec(node_class: type[Node] | None, name: str) -> InputSpec | None:
    return node_class.input_specs().get(name) if node_class is not None else None
