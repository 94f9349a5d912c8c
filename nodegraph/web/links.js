// Links drawn as curves in one SVG layer under the nodes; each has a wide invisible twin that takes the clicks.

import { socketColor } from "./socket_types.js";

const SVG = "http://www.w3.org/2000/svg";

export function curve([x1, y1], [x2, y2]) {
  const bend = Math.max(40, Math.abs(x2 - x1) / 2);
  return `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
}

function path(className, d, color) {
  const el = document.createElementNS(SVG, "path");
  el.setAttribute("class", className);
  el.setAttribute("d", d);
  if (color) el.style.stroke = color;
  return el;
}

export class LinkLayer {
  constructor(svg) {
    this.svg = svg;
    this.dragging = null;
  }

  // links: [{from, output, to, input, type, start: [x, y], end: [x, y], selected}]
  draw(links) {
    const group = document.createElementNS(SVG, "g");
    for (const link of links) {
      const d = curve(link.start, link.end);
      const hit = path("link-hit", d);
      Object.assign(hit.dataset, { to: link.to, input: link.input });
      const line = path(`link${link.selected ? " selected" : ""}`, d, socketColor(link.type));
      Object.assign(line.dataset, { from: link.from, output: link.output, to: link.to, input: link.input });
      group.append(line, hit);
    }
    this.svg.replaceChildren(group);
    if (this.dragging) this.svg.append(this.dragging);
  }

  // The link being dragged from a socket to the pointer (start is always the output end).
  drawDragging(start, end, type) {
    this.dragging ??= path("link dragging", "");
    this.dragging.setAttribute("d", curve(start, end));
    this.dragging.style.stroke = socketColor(type);
    if (!this.dragging.isConnected) this.svg.append(this.dragging);
  }

  stopDragging() {
    this.dragging?.remove();
    this.dragging = null;
  }
}
