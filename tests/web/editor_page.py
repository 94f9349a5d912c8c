"""Driving the editor the way a person does: palette clicks and drags, socket drags, widget edits, toolbar buttons.

Coordinates called "canvas" are pixels from the canvas's top-left corner, on screen.
"""

import json
from pathlib import Path


class Editor:
    def __init__(self, page):
        self.page = page

    # --- finding things -----------------------------------------------------------------------------------------

    def node(self, node_id: str):
        return self.page.locator(f'.node[data-node-id="{node_id}"]')

    def node_ids(self) -> list[str]:
        return self.page.eval_on_selector_all(".node", "nodes => nodes.map(n => n.dataset.nodeId)")

    def links(self) -> set[tuple[str, str, str, str]]:
        """(from node, output, to node, input) of every link drawn."""
        rows = self.page.eval_on_selector_all(
            "#links path.link:not(.dragging)", "paths => paths.map(p => [p.dataset.from, p.dataset.output, p.dataset.to, p.dataset.input])")
        return {tuple(row) for row in rows}

    def widget(self, node_id: str, input_name: str):
        return self.node(node_id).locator(f'.widget[data-input="{input_name}"] .widget-control')

    def socket(self, node_id: str, direction: str, name: str):
        return self.node(node_id).locator(f'.socket-{direction}[data-name="{name}"]')

    def canvas_box(self) -> dict:
        return self.page.locator("#canvas").bounding_box()

    def to_screen(self, x: float, y: float) -> tuple[float, float]:
        box = self.canvas_box()
        return box["x"] + x, box["y"] + y

    def toasts(self) -> list[str]:
        return self.page.locator(".toast").all_inner_texts()

    # --- gestures -----------------------------------------------------------------------------------------------

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        mouse = self.page.mouse
        mouse.move(*start)
        mouse.down()
        mouse.move(*end, steps=steps)
        mouse.up()

    @staticmethod
    def center(locator) -> tuple[float, float]:
        box = locator.bounding_box()
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def _added(self, before: list[str]) -> str:
        self.page.wait_for_function("n => document.querySelectorAll('.node').length > n", arg=len(before))
        (added,) = set(self.node_ids()) - set(before)
        return added

    def add_by_click(self, node_type: str) -> str:
        before = self.node_ids()
        self.page.locator(f'.palette-item[data-type="{node_type}"]').click()
        return self._added(before)

    def add_by_drag(self, node_type: str, x: float, y: float) -> str:
        """Drag a palette entry onto the canvas; the node's top-left corner lands at canvas (x, y)."""
        before = self.node_ids()
        item = self.page.locator(f'.palette-item[data-type="{node_type}"]')
        item.scroll_into_view_if_needed()  # the palette scrolls: later categories start below the window
        self.drag(self.center(item), self.to_screen(x, y))
        return self._added(before)

    def move_node(self, node_id: str, x: float, y: float) -> None:
        """Drag a node by its header so that its top-left corner lands at canvas (x, y)."""
        header = self.node(node_id).locator(".node-header")
        box = header.bounding_box()
        grab = (box["x"] + 12, box["y"] + box["height"] / 2)
        target = self.to_screen(x + 12, y + box["height"] / 2)
        self.drag(grab, target)

    def connect(self, from_id: str, output: str, to_id: str, input_name: str) -> None:
        self.drag(self.center(self.socket(from_id, "out", output)), self.center(self.socket(to_id, "in", input_name)))

    def set_value(self, node_id: str, input_name: str, value) -> None:
        control = self.widget(node_id, input_name)
        if control.evaluate("el => el.tagName") == "SELECT":
            control.select_option(str(value))
        else:
            control.fill(str(value))
            control.blur()  # commits the edit, as leaving the field does

    # --- toolbar ------------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.page.locator("#run-button").click()

    def saved_workflow(self) -> dict:
        with self.page.expect_download() as download:
            self.page.locator("#save-button").click()
        return json.loads(Path(download.value.path()).read_text())

    def open_file(self, path: Path) -> None:
        self.page.locator("#open-file").set_input_files(str(path))
