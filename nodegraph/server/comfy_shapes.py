"""Node types as ComfyUI's /object_info describes them, driven by the registry.

An entry: {input: {required: {name: [TYPE or [choices...], {options}]}, optional: {...}}, input_order, output,
output_is_list, output_name, name, display_name, description, python_module, category, output_node}. Inputs keep
their declared order (clients call nodes positionally by it); combos are lists, file choices listed from the
folders now. Options: default, min, max, step (the input's multiple_of, or a declared "step", else the defaults of
ComfyUI's frontend: 1 for INT, 0.5 for FLOAT), round, multiline, control_after_generate, image_upload, tooltip.
"""

from typing import Any

from nodegraph.nodes import Environment, InputSpec, Node, NodeRegistry

DEFAULT_STEPS = {"INT": 1, "FLOAT": 0.5}
NAMESPACES = ("comfy", "native")  # ComfyUI's class_type names, or the TYPE names of our native workflow files


def object_info(registry: NodeRegistry, env: Environment, namespace: str = "comfy") -> dict[str, dict]:
    nodes = registry.comfy_nodes() if namespace == "comfy" else list(registry)
    return {name_of(node, namespace): node_info(node, env, namespace) for node in nodes}


def find_node(registry: NodeRegistry, name: str, namespace: str = "comfy") -> type[Node] | None:
    return registry.get_comfy(name) if namespace == "comfy" else registry.get(name)


def name_of(node: type[Node], namespace: str) -> str:
    return node.COMFY_TYPE if namespace == "comfy" else node.TYPE


def node_info(node: type[Node], env: Environment, namespace: str = "comfy") -> dict:
    sections: dict[str, dict] = {"required": {}, "optional": {}}
    for spec in node.input_specs().values():
        sections["optional" if spec.optional else "required"][spec.name] = input_entry(node, spec, env)
    inputs = {key: value for key, value in sections.items() if value or key == "required"}
    return {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": list(node.OUTPUTS.values()),
        "output_is_list": [False] * len(node.OUTPUTS),
        "output_name": list(node.OUTPUTS),
        "name": name_of(node, namespace),
        "display_name": node.DISPLAY_NAME or name_of(node, namespace),
        "description": node.DESCRIPTION,
        "python_module": node.__module__,
        "category": node.CATEGORY,
        "output_node": bool(node.OUTPUT_NODE),
    }


def input_entry(node: type[Node], spec: InputSpec, env: Environment) -> list:
    """[TYPE, options] or [[choices...], options], as ComfyUI lists an input."""
    options: dict[str, Any] = {}
    if spec.kind == "link":
        if spec.description:
            options["tooltip"] = spec.description
        return [spec.type, options] if options else [spec.type]
    declared = declared_extras(node, spec.name)
    if not spec.required:
        options["default"] = spec.default
    choices = spec.allowed_choices(env)
    if choices is None and spec.type in DEFAULT_STEPS:
        if spec.minimum is not None:
            options["min"] = spec.minimum
        if spec.maximum is not None:
            options["max"] = spec.maximum
        options["step"] = declared.get("step", spec.multiple_of or DEFAULT_STEPS[spec.type])
        if "round" in declared:
            options["round"] = declared["round"]
    if spec.type == "STRING" and choices is None:
        options["multiline"] = spec.multiline
    if spec.control_after_generate:
        options["control_after_generate"] = True
    if spec.image_upload:
        options["image_upload"] = True
    if spec.description:
        options["tooltip"] = spec.description
    return [choices if choices is not None else spec.type, options]


def declared_extras(node: type[Node], name: str) -> dict:
    """What a node declares for ComfyUI's widgets beyond the InputSpec (e.g. "step", "round")."""
    info = node.Inputs.model_fields.get(name)
    extra = getattr(info, "json_schema_extra", None)
    return extra if isinstance(extra, dict) else {}
