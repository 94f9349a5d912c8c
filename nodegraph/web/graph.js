// The editor's model: nodes with their constant values, links and positions, and the workflow file format.
//
// A node is {id, type, values: {input: constant}, links: {input: [node_id, output]}, pos: [x, y], randomize: Set,
// title?}. The workflow file is exactly what the CLI runs: {"version": 1, "nodes": {...}, "ui": {...}}; "ui" keeps
// the positions, the seeds to randomize and the titles a file gave its nodes, and the executor ignores it.

export const MAX_SAFE_SEED = Number.MAX_SAFE_INTEGER; // 2^53 - 1: a JavaScript number is exact only up to here

export class Graph {
  constructor() {
    this.nodes = new Map();
  }

  add(node) {
    this.nodes.set(node.id, node);
    return node;
  }

  remove(id) {
    this.nodes.delete(id);
    for (const node of this.nodes.values()) {
      for (const [input, [source]] of Object.entries(node.links)) if (source === id) delete node.links[input];
    }
  }

  // Every link as {from, output, to, input}.
  links() {
    const all = [];
    for (const node of this.nodes.values()) {
      for (const [input, [from, output]] of Object.entries(node.links)) all.push({ from, output, to: node.id, input });
    }
    return all;
  }

  freshId(type) {
    const base = type.toLowerCase().replace(/[^a-z0-9]+/g, "") || "node";
    if (!this.nodes.has(base)) return base;
    let number = 2;
    while (this.nodes.has(`${base}_${number}`)) number += 1;
    return `${base}_${number}`;
  }
}

export function defaultValue(spec) {
  if ("default" in spec) return spec.default;
  if (spec.choices) return spec.choices[0] ?? "";
  return { INT: spec.min ?? 0, FLOAT: spec.min ?? 0, BOOLEAN: false }[spec.type] ?? "";
}

// A seed input: ComfyUI marks it control_after_generate, and the editor offers to draw a new one after each run.
export function isSeed(spec) {
  return Boolean(spec?.control_after_generate) && spec.kind === "constant" && spec.type === "INT";
}

export function createNode(graph, info, type, pos) {
  const node = { id: graph.freshId(type), type, values: {}, links: {}, pos, randomize: new Set() };
  for (const [name, spec] of Object.entries(info[type]?.inputs ?? {})) {
    if (spec.kind !== "constant") continue;
    node.values[name] = defaultValue(spec);
    if (isSeed(spec)) {
      node.values[name] = randomSeed(spec); // a new sampler starts on a seed of its own, and keeps drawing new ones
      node.randomize.add(name);
    }
  }
  return node;
}

export function randomSeed(spec) {
  const low = Math.max(0, spec.min ?? 0);
  const high = Math.min(spec.max ?? MAX_SAFE_SEED, MAX_SAFE_SEED);
  return low + Math.floor(Math.random() * (high - low + 1));
}

export function toWorkflow(graph, info, view) {
  const nodes = {};
  const ui = { nodes: {} };
  for (const node of graph.nodes.values()) {
    const declared = Object.keys(info[node.type]?.inputs ?? {});
    const names = [...declared, ...Object.keys({ ...node.values, ...node.links }).filter((n) => !declared.includes(n))];
    const inputs = {};
    for (const name of names) {
      if (name in node.links) inputs[name] = [...node.links[name]];
      else if (name in node.values) inputs[name] = node.values[name];
    }
    nodes[node.id] = { type: node.type, inputs };
    ui.nodes[node.id] = { pos: node.pos.map(Math.round) };
    if (node.randomize.size) ui.nodes[node.id].randomize = [...node.randomize];
    if (node.title) ui.nodes[node.id].title = node.title;
  }
  if (view) ui.view = view;
  return { version: 1, nodes, ui };
}

export class NotAWorkflow extends Error {}

const isLink = (value) => Array.isArray(value) && value.length === 2 && value.every((part) => typeof part === "string");

// A Graph from workflow data; nodes without a saved position are laid out by their depth in the graph.
export function fromWorkflow(data, info) {
  if (!data || typeof data !== "object" || data.version !== 1 || !data.nodes || typeof data.nodes !== "object") {
    throw new NotAWorkflow('not a nodegraph workflow: expected {"version": 1, "nodes": {...}}');
  }
  const graph = new Graph();
  const saved = data.ui?.nodes ?? {};
  const unplaced = [];
  for (const [id, entry] of Object.entries(data.nodes)) {
    if (!entry || typeof entry.type !== "string") throw new NotAWorkflow(`node ${JSON.stringify(id)} has no type`);
    const node = { id, type: entry.type, values: {}, links: {}, pos: null, randomize: new Set() };
    for (const [name, spec] of Object.entries(info[entry.type]?.inputs ?? {})) {
      if (spec.kind === "constant") node.values[name] = defaultValue(spec); // left out: the executor's default
    }
    for (const [name, value] of Object.entries(entry.inputs ?? {})) {
      const spec = info[entry.type]?.inputs?.[name];
      if (isLink(value) && spec?.kind !== "constant") {
        node.links[name] = [...value];
        delete node.values[name];
      } else {
        node.values[name] = value;
      }
    }
    const pos = saved[id]?.pos;
    if (Array.isArray(pos) && pos.length === 2 && pos.every(Number.isFinite)) node.pos = [...pos];
    else unplaced.push(node);
    for (const name of saved[id]?.randomize ?? []) node.randomize.add(name);
    if (typeof saved[id]?.title === "string" && saved[id].title) node.title = saved[id].title;
    graph.add(node);
  }
  layOut(graph, unplaced, info);
  return graph;
}

// Columns by the longest chain of links leading to a node; rows stacked by an estimate of each node's height.
function layOut(graph, nodes, info) {
  const depth = new Map();
  const depthOf = (node, seen = new Set()) => {
    if (depth.has(node.id)) return depth.get(node.id);
    if (seen.has(node.id)) return 0; // a cycle: the server reports it, the layout just stops
    seen.add(node.id);
    let deepest = -1;
    for (const [source] of Object.values(node.links)) {
      const from = graph.nodes.get(source);
      if (from) deepest = Math.max(deepest, depthOf(from, seen));
    }
    depth.set(node.id, deepest + 1);
    return deepest + 1;
  };
  const columnBottom = new Map();
  for (const node of nodes) {
    const column = depthOf(node);
    const y = columnBottom.get(column) ?? 40;
    node.pos = [40 + column * 300, y];
    columnBottom.set(column, y + estimatedHeight(node, info) + 40);
  }
}

function estimatedHeight(node, info) {
  const inputs = Object.values(info[node.type]?.inputs ?? {});
  const sockets = Math.max(inputs.filter((s) => s.kind === "link").length, Object.keys(info[node.type]?.outputs ?? {}).length);
  const widgets = inputs.filter((s) => s.kind === "constant");
  return 40 + sockets * 24 + widgets.length * 34 + widgets.filter((s) => s.multiline).length * 60;
}
