"""README.md's generated tables stay in sync with the code."""

from pathlib import Path

from tools.comfy_node_table import comfy_node_table, readme_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_lists_every_supported_comfyui_node_type_as_the_registry_has_it():
    assert readme_table(README.read_text(encoding="utf-8")) == comfy_node_table(), (
        "README.md's ComfyUI node table is stale: run `python -m tools.comfy_node_table --write`")
