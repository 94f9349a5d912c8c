"""Workflow formats, converted at the edge to the one native workflow that validation and the executor know.

Three formats come in:
    native  {"version": 1, "nodes": {id: {"type", "inputs"}}, "ui"?}                          (ours)
    api     {id: {"class_type", "inputs": {name: value | [id, output_index]}, "_meta"?}}       (ComfyUI's /prompt)
    ui      {"nodes": [...], "links": [...], "version": 0.4 | 1, ...}                          (ComfyUI's editor files)
A UI file goes to the API form first (as ComfyUI's frontend queues it), the API form to native. Node ids stay as
the file has them (as strings), so every problem names the node the user sees.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from nodegraph.nodes import Environment, NodeRegistry
from nodegraph.workflow import InvalidWorkflow, ValidWorkflow, WorkflowIssue, read_workflow_file, validate

from nodegraph.formats.api import api_to_native, native_to_api
from nodegraph.formats.png import png_workflows
from nodegraph.formats.ui import ui_to_api

Format = Literal["native", "api", "ui"]

__all__ = ["Converted", "detect_format", "to_native", "validate_workflow", "read_workflow_file", "png_workflows"]


@dataclass
class Converted:
    native: Any  # the native workflow (for native input: the data itself, unchecked)
    format: Format
    prompt: dict  # the same graph in ComfyUI's API form (what ComfyUI's PNGs embed as "prompt")
    issues: list[WorkflowIssue] = field(default_factory=list)  # problems found while converting
    quiet: set[tuple[str, str]] = field(default_factory=set)  # (node, input) whose problem is already in issues


def detect_format(data: Any) -> Format:
    """Which format `data` is in. Anything that is neither a UI file nor an API prompt counts as native, so that
    native validation explains what is wrong with it."""
    if not isinstance(data, dict):
        return "native"
    if "nodes" in data:
        return "ui" if isinstance(data["nodes"], list) else "native"
    if data and any(isinstance(entry, dict) and "class_type" in entry for entry in data.values()):
        return "api"
    return "native"


def to_native(data: Any, registry: NodeRegistry) -> Converted:
    """`data` in any format as a native workflow, with the problems found on the way (node ids as strings)."""
    kind = detect_format(data)
    if kind == "native":
        return Converted(data, "native", native_to_api(data, registry))
    if kind == "api":
        conversion = api_to_native(data, registry)
        titles = {str(node_id): entry["_meta"]["title"] for node_id, entry in data.items()
                  if isinstance(entry, dict) and isinstance(entry.get("_meta"), dict)
                  and isinstance(entry["_meta"].get("title"), str)}
        layout = {node_id: {"title": title} for node_id, title in titles.items() if node_id in conversion.nodes}
        native = {"version": 1, "nodes": conversion.nodes, "ui": {"nodes": layout}}
        return Converted(native, "api", copy.deepcopy(data), conversion.issues, conversion.quiet)
    ui = ui_to_api(data, registry)
    conversion = api_to_native(ui.prompt, registry)
    layout = {node_id: entry for node_id, entry in ui.layout.items() if node_id in conversion.nodes}
    native = {"version": 1, "nodes": conversion.nodes, "ui": {"nodes": layout}}
    return Converted(native, "ui", ui.prompt, ui.issues + conversion.issues, ui.quiet | conversion.quiet)


def validate_workflow(data: Any, registry: NodeRegistry, env: Environment) -> ValidWorkflow:
    """Convert, then validate as native; every problem of both steps in one InvalidWorkflow, named as in the file."""
    converted = to_native(data, registry)
    try:
        valid, later = validate(converted.native, registry, env), []
    except InvalidWorkflow as error:
        valid, later = None, error.issues
    issues = list(converted.issues)
    said = converted.quiet | {(issue.node_id, issue.input) for issue in issues if issue.input is not None}
    for issue in later:
        if (issue.node_id, issue.input) in said or (issue.code == "no_output" and converted.issues):
            continue
        entry = converted.prompt.get(issue.node_id) if converted.format != "native" else None
        if isinstance(entry, dict) and isinstance(entry.get("class_type"), str):  # ComfyUI's name, not our TYPE
            issue = dataclasses.replace(issue, node_type=entry["class_type"])
        issues.append(issue)
    if issues:
        raise InvalidWorkflow(issues)
    valid.source, valid.format, valid.prompt = data, converted.format, converted.prompt
    return valid
