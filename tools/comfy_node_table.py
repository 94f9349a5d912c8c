"""The README's table of supported ComfyUI node types, generated from the registry.

    python -m tools.comfy_node_table          # print the table
    python -m tools.comfy_node_table --write  # replace it in README.md (between its markers)

tests/test_readme_tables.py keeps README.md in sync with the registry.
"""

import argparse
import sys
from pathlib import Path

from nodegraph.nodes import InputSpec, Node, NodeRegistry, builtin_registry

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- comfy-node-table:start -->", "<!-- comfy-node-table:end -->"


def _input_text(spec: InputSpec) -> str:
    if spec.kind == "link":
        return f"`{spec.name}` {spec.type}" + (" (optional)" if spec.optional else "")
    return f"`{spec.name}`" + (" (optional)" if spec.optional else "")


def _native_note(node: type[Node], registry: NodeRegistry) -> str:
    """How native workflow files name the same node: the same name, or ComfyUI's under a name of its own."""
    if node.TYPE == node.COMFY_TYPE:
        return "same name"
    native = registry.get(node.COMFY_TYPE)
    if native is not None and native.COMFY_TYPE is None:
        return f"`{node.TYPE}` (our `{node.COMFY_TYPE}` has other inputs)"
    return f"`{node.TYPE}`"


def comfy_node_table(registry: NodeRegistry | None = None) -> str:
    registry = registry or builtin_registry()
    lines = ["| ComfyUI class_type | display name | inputs, in ComfyUI's order | outputs | in native files |",
             "|---|---|---|---|---|"]
    for node in registry.comfy_nodes():
        if node.NATIVE:
            continue
        inputs = ", ".join(_input_text(spec) for spec in node.input_specs().values()) or "none"
        outputs = ", ".join(f"`{name}` {socket}" for name, socket in node.OUTPUTS.items())
        if node.OUTPUT_NODE:
            outputs = (outputs + ", " if outputs else "") + "output node"
        lines.append(f"| `{node.COMFY_TYPE}` | {node.DISPLAY_NAME} | {inputs} | {outputs or 'none'} | "
                     f"{_native_note(node, registry)} |")
    ours = sorted(node.TYPE for node in registry if node.NATIVE)
    also_comfy = ", ".join(f"`{name}`" for name in ours if registry.get(name).COMFY_TYPE is not None)
    lines += ["", f"Our own node types, for native files: {', '.join(f'`{name}`' for name in ours)}. Those whose "
              f"names ComfyUI does not use ({also_comfy}) work in API prompts too. "
              "`GET /object_info?namespace=native` describes them all."]
    return "\n".join(lines)


def readme_table(text: str) -> str:
    """The table as README.md has it now (between the markers)."""
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args(argv)
    table = comfy_node_table()
    if not args.write:
        print(table)
        return 0
    text = README.read_text(encoding="utf-8")
    start, end = text.index(START) + len(START), text.index(END)
    README.write_text(text[:start] + "\n" + table + "\n" + text[end:], encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
