"""The native workflow format, its validation, the DAG the executor runs, and reading workflow files.

ComfyUI's formats are converted to this one at the edge (nodegraph.formats); validation here never knows which
format came in.

A workflow is {"version": 1, "nodes": {id: {"type": ..., "inputs": {...}}}, "ui": {...}}; an input is either a
constant or a link `[node_id, output_name]`. `validate` checks everything that can be checked before running and
reports all problems at once, each as a `WorkflowIssue` naming the node, the input and what was expected.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from nodegraph.nodes import Environment, InputSpec, Node, NodeRegistry

PNG_WORKFLOW_KEY = "workflow"  # the PNG text chunk SaveImage writes the workflow to (ComfyUI: its UI file)
PNG_PROMPT_KEY = "prompt"  # ComfyUI's PNG text chunk with the API form of what ran
PNG_CHUNKS = (PNG_WORKFLOW_KEY, PNG_PROMPT_KEY)


class NodeEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    inputs: dict[str, Any] = {}


class WorkflowFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal[1]
    nodes: dict[str, NodeEntry]
    ui: dict[str, Any] = {}  # editor state (positions, ...): kept with the workflow, ignored by the executor


@dataclass(frozen=True)
class WorkflowIssue:
    """One problem found in a workflow. `node_id`/`input` are None for problems of the file as a whole."""

    # One of: unknown_node_type, unknown_input, missing_input, bad_link, unknown_link_node, unknown_link_output,
    # socket_mismatch, wrong_type, out_of_bounds, not_in_choices, invalid_value, cycle, no_output (the workflow),
    # bad_format (the file's structure), unreadable (the file), bad_override (a --set), unsupported (a ComfyUI
    # feature nodegraph refuses, e.g. a subgraph).
    code: str
    message: str
    node_id: str | None = None
    node_type: str | None = None
    input: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id!r}" + (f" ({self.node_type})" if self.node_type else ""))
        if self.input is not None:
            where.append(f"input {self.input!r}")
        return (", ".join(where) + ": " if where else "") + self.message


class InvalidWorkflow(Exception):
    """A workflow that must not run; `issues` lists every problem found."""

    def __init__(self, issues: list[WorkflowIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


@dataclass
class PlannedNode:
    id: str
    node_class: type[Node]
    constants: dict[str, Any]  # validated, defaults filled in
    links: dict[str, tuple[str, str]]  # input name -> (source node id, output name)


@dataclass
class ValidWorkflow:
    """A workflow that passed validation: the source as submitted and its DAG (edges run from source to consumer)."""

    source: dict
    nodes: dict[str, PlannedNode]
    graph: nx.DiGraph = field(repr=False)
    format: str = "native"  # the format `source` came in: native, api (ComfyUI's API prompt) or ui (its workflow)
    prompt: dict = field(default_factory=dict)  # the same graph in ComfyUI's API format (what its PNGs embed)

    @property
    def output_nodes(self) -> list[str]:
        return [node_id for node_id, node in self.nodes.items() if node.node_class.OUTPUT_NODE]


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(part, str) for part in value)


_LINKED = object()  # stands in for a linked value while pydantic checks the constants
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"}


def validate(data: Any, registry: NodeRegistry, env: Environment) -> ValidWorkflow:
    """The runnable form of `data`, or InvalidWorkflow listing every problem found."""
    try:
        parsed = WorkflowFile.model_validate(data)
    except PydanticValidationError as error:
        raise InvalidWorkflow([_format_issue(e) for e in error.errors()]) from None

    issues: list[WorkflowIssue] = []
    nodes: dict[str, PlannedNode] = {}
    choice_lists: dict = {}  # each directory listed once per validation
    for node_id, entry in parsed.nodes.items():
        node_class = registry.get(entry.type)
        if node_class is None:
            known = ", ".join(node.TYPE for node in registry)
            issues.append(WorkflowIssue("unknown_node_type", f"unknown node type {entry.type!r}; known types: {known}",
                                        node_id, entry.type))
            continue
        planned = _check_node(node_id, node_class, entry.inputs, parsed, registry, env, issues, choice_lists)
        if planned is not None:
            nodes[node_id] = planned

    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    for node_id, node in nodes.items():
        for input_name, (source, _) in node.links.items():
            if source in nodes:
                graph.add_edge(source, node_id)
                graph.edges[source, node_id].setdefault("inputs", []).append(input_name)
    issues.extend(_cycle_issues(graph, nodes))

    if not any(node.node_class.OUTPUT_NODE for node in nodes.values()) and not issues:
        output_types = ", ".join(node.TYPE for node in registry if node.OUTPUT_NODE)
        issues.append(WorkflowIssue("no_output", f"nothing to run: the workflow has no output node ({output_types})"))
    if issues:
        raise InvalidWorkflow(issues)
    return ValidWorkflow(source=data, nodes=nodes, graph=graph)


def _check_node(node_id, node_class, given, parsed, registry, env, issues, choice_lists) -> PlannedNode | None:
    specs = node_class.input_specs()
    issue_count = len(issues)

    def report(code, input_name, message):
        issues.append(WorkflowIssue(code, message, node_id, node_class.TYPE, input_name))

    for name in given:
        if name not in specs:
            report("unknown_input", name, f"unknown input; {node_class.TYPE} has inputs {', '.join(specs) or 'none'}")

    links: dict[str, tuple[str, str]] = {}
    to_check: dict[str, Any] = {}
    for name, spec in specs.items():
        if name not in given:
            if spec.required:
                report("missing_input", name, f"required input is missing: expected {spec.expectation(env)}")
            continue
        value = given[name]
        if spec.kind == "link":
            problem = _link_problem(spec, value, parsed, registry)
            if problem:
                report(problem[0], name, problem[1])
            else:
                links[name] = (value[0], value[1])
                to_check[name] = _LINKED
        elif is_link(value):
            report("wrong_type", name, f"expected a constant, {spec.expectation(env)}, got a link {value!r}")
        else:
            to_check[name] = value

    try:
        checked = node_class.Inputs.model_validate(to_check, context={"env": env})
    except PydanticValidationError as error:
        checked = None
        reported = {issue.input for issue in issues[issue_count:]}
        for e in error.errors():
            name = e["loc"][0] if e["loc"] else None
            if name in reported:
                continue
            if name not in specs:  # a check of the node's inputs together
                report("invalid_value", None, e["msg"].removeprefix("Value error, "))
                continue
            if e["type"] == "value_error":  # a node's own check, e.g. DDPMSample's steps * denoise >= 1
                report("invalid_value", name, e["msg"].removeprefix("Value error, "))
                continue
            code = ("out_of_bounds" if e["type"] in _BOUND_ERRORS
                    else "not_in_choices" if e["type"] == "literal_error" else "wrong_type")
            report(code, name, f"{_PROBLEM[code]}: expected {specs[name].expectation(env)}, got {e['input']!r}")

    for name, spec in specs.items():
        if spec.choices_from is None or name not in to_check or not isinstance(to_check[name], str):
            continue
        if spec.choices_from not in choice_lists:
            choice_lists[spec.choices_from] = spec.allowed_choices(env)
        if to_check[name] not in choice_lists[spec.choices_from]:
            report("not_in_choices", name,
                   f"{_PROBLEM['not_in_choices']}: expected {spec.expectation(env)}, got {to_check[name]!r}")

    if len(issues) > issue_count or checked is None:
        return None
    constants = {name: getattr(checked, name) for name, spec in specs.items() if spec.kind == "constant"}
    return PlannedNode(node_id, node_class, constants, links)


_PROBLEM = {"out_of_bounds": "out of bounds", "not_in_choices": "not among the choices", "wrong_type": "wrong type"}


def _link_problem(spec: InputSpec, value, parsed: WorkflowFile, registry: NodeRegistry) -> tuple[str, str] | None:
    if not is_link(value):
        return "bad_link", f"expected {spec.expectation()}, got {value!r}"
    source_id, output = value
    source = parsed.nodes.get(source_id)
    if source is None:
        return "unknown_link_node", f"links to node {source_id!r}, which is not in the workflow"
    source_class = registry.get(source.type)
    if source_class is None:
        return None  # the unknown type is reported at its own node; saying it again here is noise
    if output not in source_class.OUTPUTS:
        outputs = ", ".join(source_class.OUTPUTS) or "none"
        return ("unknown_link_output",
                f"node {source_id!r} ({source.type}) has no output {output!r}; its outputs: {outputs}")
    if source_class.OUTPUTS[output] != spec.type:
        return ("socket_mismatch", f"expected a link to a {spec.type} output, "
                f"but {source_id!r}.{output} ({source.type}) is {source_class.OUTPUTS[output]}")
    return None


def _cycle_issues(graph: nx.DiGraph, nodes: dict[str, PlannedNode]) -> list[WorkflowIssue]:
    issues = []
    for component in nx.strongly_connected_components(graph):
        first = min(component)
        if len(component) == 1 and not graph.has_edge(first, first):
            continue
        cycle = nx.find_cycle(graph.subgraph(component), source=first)  # edges (u, v), the last one closes it
        source, target = cycle[-1][0], cycle[-1][1]
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        node = nodes[target]
        issues.append(WorkflowIssue("cycle", f"links form a cycle: {path}", target, node.node_class.TYPE,
                                    graph.edges[source, target]["inputs"][0]))
    return issues


def _format_issue(error: dict) -> WorkflowIssue:
    """A file-format error from pydantic, pinned to a node where the location names one."""
    loc = error["loc"]
    node_id = str(loc[1]) if len(loc) >= 2 and loc[0] == "nodes" else None
    input_name = str(loc[3]) if len(loc) >= 4 and loc[2] == "inputs" else None
    where = ".".join(str(part) for part in loc)
    return WorkflowIssue("bad_format", f"{where}: {error['msg']}", node_id, None, input_name)


# --- reading workflow files and applying overrides ------------------------------------------------------------


def read_workflow_file(path: Path) -> dict:
    """The workflow in a .json file (native, ComfyUI API or ComfyUI UI), or the one a PNG carries; InvalidWorkflow
    if there is none."""
    return read_workflow_and_ui(path)[0]


def read_workflow_and_ui(path: Path) -> tuple[dict, dict | None]:
    """The workflow to run from a .json file or a PNG, and ComfyUI's UI workflow that came with it (None if none).

    A PNG of ours runs its "workflow" chunk (native). One of ComfyUI's runs its "prompt" chunk (the API form of
    exactly what ran) and keeps its "workflow" chunk (the UI file) to embed again; with no prompt, the UI file runs.
    """
    from nodegraph.formats import detect_format
    from nodegraph.formats.png import is_png, png_text_chunks

    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(8)
        if not is_png(head):
            data = json.loads(path.read_text(encoding="utf-8"))
            return data, (data if detect_format(data) == "ui" else None)
        chunks = {}
        for name, text in png_text_chunks(path).items():
            if name in PNG_CHUNKS:
                try:
                    chunks[name] = json.loads(text)
                except json.JSONDecodeError as error:
                    raise ValueError(f"its {name!r} chunk is not JSON ({error})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        raise InvalidWorkflow([WorkflowIssue("unreadable", f"cannot read a workflow from {path}: {error}")]) from None
    workflow, prompt = chunks.get(PNG_WORKFLOW_KEY), chunks.get(PNG_PROMPT_KEY)
    workflow_format = detect_format(workflow) if isinstance(workflow, dict) else None
    ui = workflow if workflow_format == "ui" else None
    if workflow_format == "native":
        return workflow, None
    if isinstance(prompt, dict) and detect_format(prompt) == "api":
        return prompt, ui
    if ui is not None:
        return ui, ui
    found = f"its text chunks are {', '.join(repr(name) for name in chunks)}" if chunks else "it has neither"
    raise InvalidWorkflow([WorkflowIssue(
        "unreadable", f"cannot read a workflow from {path}: a PNG needs a {PNG_WORKFLOW_KEY!r} chunk (nodegraph's or "
        f"ComfyUI's SaveImage) or a {PNG_PROMPT_KEY!r} chunk (ComfyUI's) holding a workflow, and {found}")])


def apply_overrides(data: dict, assignments: list[str], registry: NodeRegistry) -> dict:
    """A copy of `data` (any format) with each "NODE.INPUT=VALUE" applied, NODE as the file names it.

    VALUE is read as JSON when it parses (7, 7.5, true, ["ckpt", "clip"]) and taken as text otherwise; a STRING
    input always takes the text as given, so `--set pos.text=42` sets the prompt "42". In a ComfyUI UI file the
    widget value is set (or the value of the PrimitiveNode feeding it).
    """
    from nodegraph.formats import detect_format
    from nodegraph.formats.overrides import set_api, set_native, set_ui

    data = copy.deepcopy(data)
    setter = {"native": set_native, "api": set_api, "ui": set_ui}[detect_format(data)]
    issues = []
    for assignment in assignments:
        target, equals, raw = assignment.partition("=")
        node_id, dot, input_name = target.rpartition(".")
        if not equals or not dot or not node_id or not input_name:
            issues.append(WorkflowIssue("bad_override", f"--set expects NODE.INPUT=VALUE, got {assignment!r}"))
            continue
        problem = setter(data, node_id, input_name, raw, registry)
        if problem:
            issues.append(WorkflowIssue("bad_override", f"--set {assignment!r}: {problem}", node_id, None, input_name))
    if issues:
        raise InvalidWorkflow(issues)
    return data
