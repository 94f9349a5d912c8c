// The node palette: every node type from /object_info by category, under its display name, with a search box. A click adds the node in
// view; dragging it drops it where the pointer lets go.

import { socketColor } from "./socket_types.js";

const DRAG_THRESHOLD = 4;

export class Palette {
  // hooks: onAdd(type), onDrop(type, clientX, clientY)
  constructor(list, search, hooks) {
    this.list = list;
    this.search = search;
    this.hooks = hooks;
    search.addEventListener("input", () => this.filter());
    search.addEventListener("keydown", (event) => {
      const first = this.list.querySelector(".palette-item:not([hidden])");
      if (event.key === "Enter" && first) this.hooks.onAdd(first.dataset.type);
      if (event.key === "Escape") {
        search.value = "";
        this.filter();
      }
    });
  }

  setInfo(info) {
    const groups = new Map();
    for (const node of Object.values(info)) {
      const category = node.category || "other";
      if (!groups.has(category)) groups.set(category, []);
      groups.get(category).push(node);
    }
    // ComfyUI's "_for_testing" and other underscored categories come last, as in its menus.
    const hiddenLast = (category) => (category.startsWith("_") ? 1 : 0);
    const order = (a, b) => hiddenLast(a) - hiddenLast(b) || a.localeCompare(b);
    const sections = [...groups.keys()].sort(order).map((category) => {
      const section = document.createElement("section");
      section.className = "palette-group";
      section.dataset.category = category;
      // ComfyUI's nested categories ("sampling/custom_sampling/schedulers") read as a path that wraps in the narrow panel
      const label = category.replaceAll("_", " ").split("/").join(" › ");
      const heading = Object.assign(document.createElement("h3"), { textContent: label });
      section.append(heading);
      for (const node of groups.get(category).sort((a, b) => a.title.localeCompare(b.title) || a.type.localeCompare(b.type))) {
        section.append(this.item(node));
      }
      return section;
    });
    this.list.replaceChildren(...sections);
    this.filter();
  }

  item(node) {
    const item = document.createElement("div");
    item.className = "palette-item";
    item.dataset.type = node.type;
    item.tabIndex = 0;
    item.setAttribute("role", "button");
    item.title = [node.type, node.description].filter(Boolean).join(": ");
    item.dataset.search = `${node.title} ${node.type} ${node.category} ${node.description}`.toLowerCase();
    const dots = document.createElement("span");
    dots.className = "palette-dots";
    for (const type of Object.values(node.outputs)) {
      const dot = document.createElement("span");
      dot.style.background = socketColor(type);
      dots.append(dot);
    }
    item.append(Object.assign(document.createElement("span"), { className: "palette-name", textContent: node.title }), dots);
    item.addEventListener("keydown", (event) => event.key === "Enter" && this.hooks.onAdd(node.type));
    item.addEventListener("pointerdown", (event) => this.press(event, node.type, node.title));
    return item;
  }

  press(event, type, title) {
    if (event.button !== 0) return;
    event.preventDefault();
    const [x0, y0] = [event.clientX, event.clientY];
    let ghost = null;
    const move = (e) => {
      if (!ghost && Math.hypot(e.clientX - x0, e.clientY - y0) < DRAG_THRESHOLD) return;
      ghost ??= document.body.appendChild(Object.assign(document.createElement("div"), { className: "palette-ghost", textContent: title }));
      ghost.style.transform = `translate(${e.clientX + 8}px, ${e.clientY + 8}px)`;
    };
    const up = (e) => {
      window.removeEventListener("pointermove", move);
      window.removeEventListener("pointerup", up);
      if (!ghost) return this.hooks.onAdd(type);
      ghost.remove();
      if (document.elementFromPoint(e.clientX, e.clientY)?.closest("#canvas")) this.hooks.onDrop(type, e.clientX, e.clientY);
    };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", up);
  }

  filter() {
    const words = this.search.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const section of this.list.querySelectorAll(".palette-group")) {
      let visible = 0;
      for (const item of section.querySelectorAll(".palette-item")) {
        item.hidden = !words.every((word) => item.dataset.search.includes(word));
        visible += item.hidden ? 0 : 1;
      }
      section.hidden = visible === 0;
    }
  }
}
