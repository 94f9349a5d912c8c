// Wires the editor to the server: the palette, the toolbar, files, queueing and the websocket.

import { getJSON, postJSON, uploadImage } from "./api.js";
import { Editor } from "./editor.js";
import { downloadWorkflow, readWorkflowFile } from "./files.js";
import { Gallery } from "./gallery.js";
import { randomSeed } from "./graph.js";
import { nodeInfoFrom } from "./node_info.js";
import { Palette } from "./palette.js";
import { RunView, errorText, issuesFrom } from "./run_view.js";
import { ServerSocket } from "./socket.js";
import { toast } from "./toast.js";

const $ = (id) => document.getElementById(id);
const SAVED_WORKFLOW = "nodegraph.workflow"; // the graph survives a reload of the page
const CLIENT_ID = "nodegraph.client_id"; // per tab, so a reload keeps receiving the events of its prompts
const EMPTY = { version: 1, nodes: {}, ui: {} };

function clientId() {
  let id = sessionStorage.getItem(CLIENT_ID);
  if (!id) {
    id = [...crypto.getRandomValues(new Uint8Array(12))].map((b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem(CLIENT_ID, id);
  }
  return id;
}

const gallery = new Gallery($("gallery-list"));
const editor = new Editor({ canvas: $("canvas"), world: $("world"), svg: $("links") }, {
  onRender: (elements) => runView.decorate(elements),
  onEdited: (workflow) => localStorage.setItem(SAVED_WORKFLOW, JSON.stringify(workflow)),
  onValueEdited: (id, input) => runView.clearInputError(id, input),
  onUpload: (node, input, file) => upload(node, input, file),
  onUndoChange: (canUndo) => { $("undo-button").disabled = !canUndo; },
});
const runView = new RunView(editor, gallery, $("progress"), $("queue-size"), (message) => toast(message, "error"));
const palette = new Palette($("palette-list"), $("palette-search"), {
  onAdd: (type) => editor.addNode(type, editor.freeSpot()),
  onDrop: (type, x, y) => editor.addNode(type, editor.viewport.toWorld(x, y)),
});

// ComfyUI's /object_info entries, keyed by the type names our workflow files use.
async function refreshInfo() {
  const info = nodeInfoFrom(await getJSON("/object_info?namespace=native"));
  palette.setInfo(info);
  editor.setInfo(info);
}

// --- running --------------------------------------------------------------------------------------------------

// The server checks the workflow first (/validate), so problems are shown on their nodes before anything queues.
// It is queued as ComfyUI's frontend queues: {prompt, client_id, extra_data}; the workflow also goes into
// extra_pnginfo, so ComfyUI's SaveImage embeds it (with its layout) in the PNGs it writes, as ours does.
async function run() {
  const workflow = editor.workflow();
  runView.clearErrors();
  try {
    const check = await postJSON("/validate", { prompt: workflow });
    if (!check.valid) return reportProblems(check);
    const queued = await postJSON("/prompt", {
      prompt: workflow, client_id: clientId(), extra_data: { extra_pnginfo: { workflow } },
    });
    editor.randomizeSeeds(randomSeed);
    runView.queued(queued.prompt_id, queued.number);
  } catch (error) {
    if (error.body?.node_errors || error.body?.error?.type) reportProblems(error.body);
    else toast(error.message, "error");
  }
}

// A refusal in ComfyUI's shape, {error: {type, message, details}, node_errors: {...}}: on the nodes where it can be.
function reportProblems({ error, node_errors: nodeErrors }, prefix = "Not queued") {
  const issues = issuesFrom(nodeErrors);
  if (!issues.length) {
    toast(`${prefix}: ${errorText(error) || "the server refused the workflow"}`, "error");
    return;
  }
  const general = runView.showIssues(issues);
  const count = issues.length === 1 ? "1 problem" : `${issues.length} problems`;
  toast(`${prefix}: ${count}${general.length < issues.length ? ", shown on the nodes" : ""}`, "error");
  for (const message of general) toast(message, "error");
}

async function interrupt() {
  try {
    await postJSON("/interrupt", {});
  } catch (error) {
    toast(error.message, "error");
  }
}

async function upload(node, input, file) {
  try {
    const stored = await uploadImage(file);
    const name = stored.subfolder ? `${stored.subfolder}/${stored.name}` : stored.name; // as LoadImage names it
    await refreshInfo();
    editor.setValue(node.id, input, name);
    toast(`Uploaded ${name}`);
  } catch (error) {
    toast(`Upload failed: ${error.message}`, "error");
  }
}

// --- files ----------------------------------------------------------------------------------------------------

function show(workflow, source) {
  editor.load(workflow);
  runView.forget();
  toast(`Opened ${source}`);
}

// Any workflow the server reads (ours, ComfyUI's API prompt or its UI file) is converted once, by the server, to
// ours; candidates are tried in order (a ComfyUI PNG carries its UI graph and its API prompt).
async function open(candidates, source) {
  let refusal = null;
  for (const data of candidates) {
    try {
      const converted = await postJSON("/nodegraph/convert", { workflow: data });
      show(converted.workflow, source);
      if (Object.keys(converted.node_errors ?? {}).length) reportProblems(converted, `${source} opened with`);
      return;
    } catch (error) {
      if (error.status !== 400) return toast(`${source}: ${error.message}`, "error");
      refusal ??= error;
    }
  }
  const issues = issuesFrom(refusal.body?.node_errors);
  const detail = issues.length ? issues.map((i) => `${i.node_id}${i.input ? `.${i.input}` : ""}: ${i.message}`).join("; ")
    : errorText(refusal.body?.error) || refusal.message;
  toast(`${source} cannot be opened: ${detail}`, "error");
}

async function openFile(file) {
  try {
    await open(await readWorkflowFile(file), file.name);
  } catch (error) {
    toast(`${file.name}: ${error.message}`, "error");
  }
}

async function listExamples() {
  const { workflows } = await getJSON("/workflows");
  const select = $("examples");
  select.replaceChildren(select.options[0]);
  for (const name of workflows) select.append(new Option(name.replace(/\.json$/, ""), name));
  select.disabled = workflows.length === 0;
}

function listenForFiles() {
  $("open-button").addEventListener("click", () => $("open-file").click());
  $("open-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    event.target.value = ""; // the same file can be opened again
    if (file) openFile(file);
  });
  $("save-button").addEventListener("click", () => downloadWorkflow(editor.workflow()));
  $("new-button").addEventListener("click", () => show(EMPTY, "a new workflow"));
  $("examples").addEventListener("change", async (event) => {
    const name = event.target.value;
    event.target.value = "";
    if (!name) return;
    try {
      await open([await getJSON(`/workflows/${encodeURIComponent(name)}`)], name);
    } catch (error) {
      toast(error.message, "error");
    }
  });
  const hasFiles = (event) => event.dataTransfer?.types?.includes("Files");
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    document.body.classList.add("dropping");
  });
  window.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("dropping");
  });
  window.addEventListener("drop", (event) => {
    document.body.classList.remove("dropping");
    if (!hasFiles(event)) return;
    event.preventDefault();
    const [file] = event.dataTransfer.files;
    if (file) openFile(file);
  });
}

// --- wiring ---------------------------------------------------------------------------------------------------

function listenToToolbar() {
  $("run-button").addEventListener("click", run);
  $("interrupt-button").addEventListener("click", interrupt);
  $("undo-button").addEventListener("click", () => editor.undo());
  $("fit-button").addEventListener("click", () => editor.fit());
  document.addEventListener("keydown", (event) => {
    const command = event.ctrlKey || event.metaKey;
    if (command && event.key === "Enter") {
      event.preventDefault();
      run();
    } else if (command && event.key.toLowerCase() === "s") {
      event.preventDefault();
      downloadWorkflow(editor.workflow());
    }
  });
}

function connect() {
  const connection = $("connection");
  const socket = new ServerSocket(clientId(), {
    onEvent: (event) => runView.handle(event),
    onPreview: (blob) => runView.preview(blob),
    onOpen: (reconnected) => {
      connection.dataset.state = "open";
      connection.title = "Connected to the server";
      // After a restart the server may have other checkpoints or images: ask again.
      if (reconnected) refreshInfo().catch((error) => toast(error.message, "error"));
    },
    onClose: () => {
      connection.dataset.state = "closed";
      connection.title = "Connection lost: reconnecting…";
    },
  });
  socket.connect();
}

function restoreSaved() {
  try {
    const saved = JSON.parse(localStorage.getItem(SAVED_WORKFLOW) || "null");
    if (saved) return editor.load(saved, { undoable: false });
  } catch {
    localStorage.removeItem(SAVED_WORKFLOW); // unreadable: start empty rather than not at all
  }
  editor.load(EMPTY, { undoable: false });
}

async function boot() {
  listenToToolbar();
  listenForFiles();
  await refreshInfo();
  restoreSaved();
  connect();
  await Promise.all([
    listExamples().catch(() => { $("examples").disabled = true; }),
    getJSON("/history?max_items=20").then((history) => gallery.addHistory(history)).catch(() => {}),
  ]);
  document.body.dataset.ready = "true";
}

boot().catch((error) => toast(`The editor could not start: ${error.message}`, "error"));
