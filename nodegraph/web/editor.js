// The graph editor: renders the Graph, and turns pointer and key gestures into edits that can be undone.

import { Graph, createNode, fromWorkflow, toWorkflow } from "./graph.js";
import { LinkLayer } from "./links.js";
import { buildNodeElement } from "./node_element.js";
import { canConnect } from "./socket_types.js";
import { toast } from "./toast.js";
import { UndoStack } from "./undo.js";
import { Viewport } from "./viewport.js";

const DRAG_THRESHOLD = 3; // pixels a press may wander and still be a click

const isTyping = (target) => Boolean(target.closest?.("input, textarea, select, [contenteditable]"));

export class Editor {
  // hooks: onRender(elements), onEdited(snapshot), onValueEdited(nodeId, input), onUpload(node, input, file),
  // onUndoChange(canUndo)
  constructor({ canvas, world, svg }, hooks) {
    this.canvas = canvas;
    this.world = world;
    this.hooks = hooks;
    this.info = {};
    this.graph = new Graph();
    this.elements = new Map();
    this.selection = null; // {node: id} or {link: {to, input}}
    this.viewport = new Viewport(canvas, world);
    this.links = new LinkLayer(svg);
    this.undoStack = new UndoStack(() => hooks.onUndoChange(this.undoStack.canUndo));
    // A node changes size as errors, previews and images appear in it or a prompt box is resized: links follow.
    this.resizes = new ResizeObserver(() => {
      this.redrawQueued ||= requestAnimationFrame(() => {
        this.redrawQueued = 0;
        this.drawLinks();
      });
    });
    this.redrawQueued = 0;
    this.listen();
    this.viewport.apply();
  }

  // --- state in and out ---------------------------------------------------------------------------------------

  setInfo(info) {
    this.info = info;
    this.render();
  }

  workflow() {
    return toWorkflow(this.graph, this.info, this.viewport.state);
  }

  snapshot() {
    return toWorkflow(this.graph, this.info); // the view is no edit: panning is not undone
  }

  // Replace the graph with a workflow; its saved view is restored, otherwise the whole graph is shown.
  load(workflow, { undoable = true } = {}) {
    this.graph = fromWorkflow(workflow, this.info);
    this.selection = null;
    this.render();
    if (workflow.ui?.view) this.viewport.set(workflow.ui.view);
    else this.fit();
    if (undoable) this.commit();
    else this.undoStack.reset(this.snapshot());
  }

  commit() {
    this.drawLinks();
    if (this.undoStack.commit(this.snapshot())) this.hooks.onEdited(this.workflow());
  }

  undo() {
    const previous = this.undoStack.undo();
    if (!previous) return;
    this.graph = fromWorkflow(previous, this.info);
    this.selection = null;
    this.render();
    this.hooks.onEdited(this.workflow());
  }

  // --- edits --------------------------------------------------------------------------------------------------

  addNode(type, [x, y]) {
    const node = this.graph.add(createNode(this.graph, this.info, type, [Math.round(x), Math.round(y)]));
    this.selection = { node: node.id };
    this.render();
    this.commit();
    return node;
  }

  // Where a node added by a click goes: the middle of the view, stepped so that several do not pile up.
  freeSpot() {
    const box = this.canvas.getBoundingClientRect();
    let [x, y] = this.viewport.toWorld(box.left + box.width / 3, box.top + box.height / 4);
    const taken = () => [...this.graph.nodes.values()].some((n) => Math.abs(n.pos[0] - x) < 20 && Math.abs(n.pos[1] - y) < 20);
    while (taken()) {
      x += 30;
      y += 30;
    }
    return [x, y];
  }

  removeNode(id) {
    this.graph.remove(id);
    this.selection = null;
    this.render();
    this.commit();
  }

  deleteSelection() {
    if (this.selection?.node) this.removeNode(this.selection.node);
    else if (this.selection?.link) {
      const { to, input } = this.selection.link;
      delete this.graph.nodes.get(to)?.links[input];
      this.selection = null;
      this.commit();
    }
  }

  select(selection) {
    this.selection = selection;
    for (const [id, el] of this.elements) el.classList.toggle("selected", selection?.node === id);
    this.drawLinks();
  }

  setValue(id, input, value) {
    const node = this.graph.nodes.get(id);
    if (!node) return;
    node.values[input] = value;
    this.render();
    this.commit();
  }

  // Draws new seeds where "randomize after run" is on (called once a run is queued).
  randomizeSeeds(randomSeed) {
    let changed = false;
    for (const node of this.graph.nodes.values()) {
      for (const input of node.randomize) {
        const spec = this.info[node.type]?.inputs?.[input];
        if (!spec) continue;
        node.values[input] = randomSeed(spec);
        const box = this.elements.get(node.id)?.querySelector(`.widget[data-input="${input}"] .widget-control`);
        if (box) box.value = node.values[input];
        changed = true;
      }
    }
    if (changed) this.commit();
  }

  // --- drawing ------------------------------------------------------------------------------------------------

  render() {
    for (const el of this.elements.values()) el.remove();
    this.elements.clear();
    this.resizes.disconnect();
    const hooks = {
      onInput: (node, input, value) => {
        node.values[input] = value;
        this.hooks.onValueEdited(node.id, input);
      },
      onCommit: () => this.commit(),
      onUpload: (node, input, file) => this.hooks.onUpload(node, input, file),
      onRandomize: (node, input, on) => {
        if (on) node.randomize.add(input);
        else node.randomize.delete(input);
        this.commit();
      },
      onDelete: (node) => this.removeNode(node.id),
    };
    for (const node of this.graph.nodes.values()) {
      const el = buildNodeElement(node, this.info[node.type], hooks);
      el.classList.toggle("selected", this.selection?.node === node.id);
      this.world.append(el);
      this.elements.set(node.id, el);
      this.resizes.observe(el);
    }
    this.canvas.classList.toggle("empty", this.graph.nodes.size === 0);
    this.drawLinks();
    this.hooks.onRender(this.elements);
  }

  // The centre of a socket in world coordinates (independent of the zoom).
  socketPoint(id, dir, name) {
    const nodeEl = this.elements.get(id);
    const node = this.graph.nodes.get(id);
    const socket = nodeEl?.querySelector(`.socket-${dir}[data-name="${CSS.escape(name)}"]`);
    if (!socket) return null;
    const nodeBox = nodeEl.getBoundingClientRect();
    const box = socket.getBoundingClientRect();
    const zoom = this.viewport.zoom;
    return [node.pos[0] + (box.left + box.width / 2 - nodeBox.left) / zoom,
            node.pos[1] + (box.top + box.height / 2 - nodeBox.top) / zoom];
  }

  drawLinks() {
    const drawn = [];
    for (const link of this.graph.links()) {
      const start = this.socketPoint(link.from, "out", link.output);
      const end = this.socketPoint(link.to, "in", link.input);
      if (!start || !end) continue; // a link to a node or output that does not exist: the server will say so
      const type = this.info[this.graph.nodes.get(link.from).type]?.outputs?.[link.output];
      const selected = this.selection?.link?.to === link.to && this.selection?.link?.input === link.input;
      drawn.push({ ...link, type, start, end, selected });
    }
    this.links.draw(drawn);
  }

  fit() {
    if (!this.graph.nodes.size) {
      this.viewport.set({ x: 0, y: 0, zoom: 1 });
      return;
    }
    let [left, top, right, bottom] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const [id, el] of this.elements) {
      const [x, y] = this.graph.nodes.get(id).pos;
      left = Math.min(left, x);
      top = Math.min(top, y);
      right = Math.max(right, x + el.offsetWidth);
      bottom = Math.max(bottom, y + el.offsetHeight);
    }
    this.viewport.frame([left, top, right, bottom]);
  }

  // --- gestures -----------------------------------------------------------------------------------------------

  listen() {
    this.canvas.addEventListener("pointerdown", (event) => this.pointerDown(event));
    this.canvas.addEventListener("wheel", (event) => {
      if (event.target.closest("textarea") && event.target.scrollHeight > event.target.clientHeight) return;
      event.preventDefault();
      this.viewport.zoomAt(event.clientX, event.clientY, Math.exp(-event.deltaY * 0.0015));
    }, { passive: false });
    document.addEventListener("keydown", (event) => this.keyDown(event));
  }

  keyDown(event) {
    if (isTyping(event.target)) return; // keys typed into a widget are text, not commands
    const command = event.ctrlKey || event.metaKey;
    if (command && event.key.toLowerCase() === "z") {
      event.preventDefault();
      this.undo();
    } else if ((event.key === "Delete" || event.key === "Backspace") && this.selection) {
      event.preventDefault();
      this.deleteSelection();
    } else if (event.key === "Escape") {
      this.select(null);
    } else if (event.key === "." && !command) {
      this.fit();
    }
  }

  pointerDown(event) {
    if (event.button !== 0 && event.button !== 1) return;
    const target = event.target;
    const socket = target.closest(".socket");
    const nodeEl = target.closest(".node");
    if (event.button === 1) return this.track(event, this.panGesture(event));
    if (socket) return this.track(event, this.connectGesture(socket));
    if (target.closest(".link-hit")) {
      this.select({ link: { to: target.dataset.to, input: target.dataset.input } });
      return;
    }
    if (nodeEl) {
      this.select({ node: nodeEl.dataset.nodeId });
      if (target.closest(".node-header") && !target.closest("button")) this.track(event, this.moveGesture(nodeEl, event));
      return;
    }
    this.select(null);
    this.canvas.focus({ preventScroll: true });
    this.track(event, this.panGesture(event));
  }

  // Follows one press to its release: gesture.move(dx, dy, event) and gesture.end(event, moved).
  track(event, gesture) {
    event.preventDefault();
    const [x0, y0] = [event.clientX, event.clientY];
    let moved = false;
    const move = (e) => {
      moved ||= Math.hypot(e.clientX - x0, e.clientY - y0) > DRAG_THRESHOLD;
      if (moved) gesture.move(e);
    };
    const end = (e) => {
      window.removeEventListener("pointermove", move);
      window.removeEventListener("pointerup", end);
      window.removeEventListener("pointercancel", end);
      gesture.end(e, moved);
    };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", end);
    window.addEventListener("pointercancel", end);
  }

  panGesture(press) {
    let last = [press.clientX, press.clientY];
    this.canvas.classList.add("panning");
    return {
      move: (e) => {
        this.viewport.panBy(e.clientX - last[0], e.clientY - last[1]);
        last = [e.clientX, e.clientY];
      },
      end: () => this.canvas.classList.remove("panning"),
    };
  }

  moveGesture(nodeEl, press) {
    const node = this.graph.nodes.get(nodeEl.dataset.nodeId);
    const start = [...node.pos];
    const origin = this.viewport.toWorld(press.clientX, press.clientY);
    return {
      move: (e) => {
        const [wx, wy] = this.viewport.toWorld(e.clientX, e.clientY);
        node.pos = [Math.round(start[0] + wx - origin[0]), Math.round(start[1] + wy - origin[1])];
        nodeEl.style.left = `${node.pos[0]}px`;
        nodeEl.style.top = `${node.pos[1]}px`;
        this.drawLinks();
      },
      end: (e, moved) => moved && this.commit(),
    };
  }

  // Drag from an output to an input (or back). Dragging from a linked input picks its link up: drop it on another
  // input to move it, anywhere else to remove it. A click without a drag changes nothing.
  connectGesture(socketEl) {
    const nodeId = socketEl.closest(".node").dataset.nodeId;
    const { dir, name, type } = socketEl.dataset;
    let anchor = null;
    let anchorPoint = null;
    let pickedUp = false;
    const begin = () => {
      anchor = { nodeId, dir, name, type };
      const node = this.graph.nodes.get(nodeId);
      if (dir === "in" && node.links[name]) {
        const [from, output] = node.links[name];
        delete node.links[name];
        pickedUp = true;
        const outputType = this.info[this.graph.nodes.get(from)?.type]?.outputs?.[output] ?? type;
        anchor = { nodeId: from, dir: "out", name: output, type: outputType };
        this.drawLinks();
      }
      anchorPoint = this.socketPoint(anchor.nodeId, anchor.dir, anchor.name);
      this.markCompatible(anchor);
    };
    return {
      move: (e) => {
        if (!anchor) begin();
        const pointer = this.viewport.toWorld(e.clientX, e.clientY);
        const [start, end] = anchor.dir === "out" ? [anchorPoint, pointer] : [pointer, anchorPoint];
        if (start && end) this.links.drawDragging(start, end, anchor.type);
      },
      end: (e, moved) => {
        if (!moved || !anchor) return;
        this.links.stopDragging();
        this.canvas.classList.remove("connecting");
        for (const el of this.world.querySelectorAll(".socket.compatible, .socket.incompatible")) {
          el.classList.remove("compatible", "incompatible");
        }
        const target = this.socketAt(e.clientX, e.clientY, anchor);
        if (target) this.connect(anchor, target);
        if (target || pickedUp) this.commit();
        else this.drawLinks();
      },
    };
  }

  markCompatible(anchor) {
    this.canvas.classList.add("connecting");
    const wanted = anchor.dir === "out" ? "in" : "out";
    for (const el of this.world.querySelectorAll(`.socket-${wanted}`)) {
      const ok = canConnect(el.dataset.type, anchor.type) && el.closest(".node").dataset.nodeId !== anchor.nodeId;
      el.classList.add(ok ? "compatible" : "incompatible");
    }
  }

  // The socket of the other direction under the pointer (the whole row counts), or null.
  socketAt(clientX, clientY, anchor) {
    const hit = document.elementFromPoint(clientX, clientY);
    const row = hit?.closest(".socket-row");
    const socket = hit?.closest(".socket") ?? row?.querySelector(".socket");
    const nodeEl = socket?.closest(".node");
    if (!socket || !nodeEl || socket.dataset.dir === anchor.dir) return null;
    return { nodeId: nodeEl.dataset.nodeId, dir: socket.dataset.dir, name: socket.dataset.name, type: socket.dataset.type };
  }

  connect(anchor, target) {
    const [output, input] = anchor.dir === "out" ? [anchor, target] : [target, anchor];
    if (output.nodeId === input.nodeId) return;
    if (!canConnect(output.type, input.type)) {
      toast(`A ${output.type} output cannot connect to a ${input.type} input`, "error");
      return;
    }
    this.graph.nodes.get(input.nodeId).links[input.name] = [output.nodeId, output.name];
    this.hooks.onValueEdited(input.nodeId, input.name);
  }
}
