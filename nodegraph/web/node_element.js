// The DOM of one node: a header, its sockets (inputs left, outputs right), its widgets, and room for results.

import { socketColor } from "./socket_types.js";
import { createWidget, isImageChoice } from "./widgets.js";

function div(className, text) {
  const el = document.createElement("div");
  el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function socketRow(dir, name, type) {
  const row = div(`socket-row socket-row-${dir}`);
  const socket = div(`socket socket-${dir}`);
  Object.assign(socket.dataset, { dir, name, type });
  socket.style.setProperty("--socket-color", socketColor(type));
  socket.title = `${name}: ${type}`;
  const label = div("socket-label", name);
  if (dir === "in") {
    row.dataset.input = name;
    row.append(socket, label, div("input-error"));
  } else {
    row.dataset.output = name;
    row.append(label, socket);
  }
  return row;
}

// hooks: onInput(node, name, value), onCommit(), onUpload(node, name, file), onRandomize(node, name, on),
// onDelete(node)
export function buildNodeElement(node, nodeInfo, hooks) {
  const el = div("node");
  el.dataset.nodeId = node.id;
  el.dataset.type = node.type;
  el.style.left = `${node.pos[0]}px`;
  el.style.top = `${node.pos[1]}px`;
  if (nodeInfo?.output_node) el.classList.add("output-node");

  const header = div("node-header");
  // ComfyUI's display name (or the title the file gave the node); the type it runs as is in the tooltip.
  const title = div("node-title", node.title || nodeInfo?.title || node.type);
  title.title = [node.type, nodeInfo?.description].filter(Boolean).join(": ");
  const remove = document.createElement("button");
  Object.assign(remove, { type: "button", className: "node-delete", textContent: "×", title: "Remove node (Delete)" });
  remove.setAttribute("aria-label", `Remove ${node.id}`);
  remove.addEventListener("click", () => hooks.onDelete(node));
  const progress = div("node-progress");
  progress.append(div("node-progress-bar"));
  header.append(title, div("node-id", node.id), div("node-badge"), remove, progress);
  el.append(header, div("node-message"));

  const inputs = div("node-inputs");
  const outputs = div("node-outputs");
  const specs = nodeInfo?.inputs ?? {};
  for (const [name, spec] of Object.entries(specs)) {
    if (spec.kind === "link") inputs.append(socketRow("in", name, spec.type));
  }
  for (const name of Object.keys(node.links)) {
    if (!(name in specs)) inputs.append(socketRow("in", name, "?")); // a link to an input this type lacks
  }
  for (const [name, type] of Object.entries(nodeInfo?.outputs ?? {})) outputs.append(socketRow("out", name, type));
  const sockets = div("node-sockets");
  sockets.append(inputs, outputs);
  el.append(sockets);

  const widgets = div("node-widgets");
  for (const [name, value] of Object.entries(node.values)) {
    const spec = specs[name] ?? { kind: "constant", type: "STRING", description: "not an input of this node type" };
    widgets.append(createWidget({
      name, spec, value,
      imageChoice: isImageChoice(nodeInfo, name),
      randomize: node.randomize.has(name),
      onInput: (v) => hooks.onInput(node, name, v),
      onCommit: () => hooks.onCommit(),
      onUpload: (file) => hooks.onUpload(node, name, file),
      onRandomize: (on) => hooks.onRandomize(node, name, on),
    }));
  }
  if (widgets.children.length) el.append(widgets);

  if (!nodeInfo) {
    el.classList.add("unknown-type");
    el.querySelector(".node-message").textContent = `unknown node type ${node.type}`;
  }
  const preview = document.createElement("img");
  Object.assign(preview, { className: "latent-preview", alt: "sampling preview", hidden: true });
  el.append(preview, div("node-images"));
  return el;
}
