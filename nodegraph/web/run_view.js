// What a run looks like on the graph: node states, progress, the live latent preview, the images made, and the
// errors on the node and input they belong to. Kept apart from the nodes' DOM, so a re-render shows it again.

import { viewUrl } from "./api.js";

const FINAL_TEXT = { execution_success: "Done", execution_error: "Failed", execution_interrupted: "Stopped" };

export class RunView {
  // onGeneralError(message): a failure that belongs to no node on the canvas
  constructor(editor, gallery, progressEl, queueSizeEl, onGeneralError) {
    this.editor = editor;
    this.onGeneralError = onGeneralError;
    this.gallery = gallery;
    this.progressEl = progressEl;
    this.queueSizeEl = queueSizeEl;
    this.states = new Map(); // node id -> running | cached | done | error | interrupted
    this.progress = new Map(); // node id -> fraction done
    this.previews = new Map(); // node id -> blob URL of the latest latent preview
    this.images = new Map(); // node id -> [{filename, subfolder, type}]
    this.errors = new Map(); // node id -> {message, inputs: Map(input -> message)}
    this.running = null;
    this.previewNode = null;
    this.seen = new Set(); // prompts we have had events of
  }

  // The server took a prompt. Its events may have come first (a run served from the cache is that quick).
  queued(promptId, number) {
    if (!this.seen.has(promptId)) this.showProgress(null, `Queued #${number}`);
  }

  // --- websocket events (ComfyUI's payloads) ---------------------------------------------------------------------

  handle({ type, data }) {
    if (data?.prompt_id) this.seen.add(data.prompt_id);
    switch (type) {
      case "status":
        this.queueSizeEl.textContent = `queue ${data?.status?.exec_info?.queue_remaining ?? 0}`;
        break;
      case "execution_start":
        this.startRun();
        this.showProgress(0, "Starting");
        break;
      case "execution_cached":
        for (const id of data.nodes ?? []) this.setState(String(id), "cached");
        break;
      case "executing":
        this.finishRunning("done");
        if (data.node != null) {
          this.running = String(data.display_node ?? data.node); // the node on the canvas that stands for it
          this.setState(this.running, "running");
          this.showProgress(null, `Running ${this.nodeName(this.running)}`);
        }
        break;
      case "progress": {
        const id = String(data.node ?? this.running);
        const fraction = data.max ? data.value / data.max : 0;
        this.previewNode = id;
        this.progress.set(id, fraction);
        this.applyNode(id);
        this.showProgress(fraction, `${this.nodeName(id)}: step ${data.value}/${data.max}`);
        break;
      }
      case "executed": { // also for output nodes served from the cache, with the images they made then
        const id = String(data.display_node ?? data.node);
        if (this.states.get(id) !== "cached") this.setState(id, "done");
        this.showImages(id, data.output);
        break;
      }
      case "execution_error":
        this.finishRunning("error");
        if (data.node_id != null) this.setState(String(data.node_id), "error");
        this.setError(data.node_id == null ? null : String(data.node_id), null, data.exception_message);
        if (data.node_id == null || !this.editor.elements.has(String(data.node_id))) this.onGeneralError(data.exception_message);
        this.endRun(type);
        break;
      case "execution_interrupted":
        this.finishRunning("interrupted");
        if (data.node_id != null) this.setState(String(data.node_id), "interrupted");
        this.endRun(type);
        break;
      case "execution_success":
        this.finishRunning("done");
        this.endRun(type);
        break;
    }
  }

  // The title a node shows, for the progress text.
  nodeName(id) {
    const node = this.editor.graph.nodes.get(id);
    return node ? node.title || this.editor.info[node.type]?.title || node.type : id;
  }

  showImages(id, output) {
    if (!output?.images?.length) return;
    this.images.set(id, output.images);
    this.applyNode(id);
    this.gallery.add(output.images);
  }

  preview(blob) {
    const id = this.previewNode;
    if (!id) return;
    const old = this.previews.get(id);
    this.previews.set(id, URL.createObjectURL(blob));
    if (old) URL.revokeObjectURL(old);
    this.applyNode(id);
  }

  startRun() {
    for (const url of this.previews.values()) URL.revokeObjectURL(url);
    this.states.clear();
    this.progress.clear();
    this.previews.clear();
    this.images.clear();
    this.running = null;
    this.previewNode = null;
    for (const id of this.editor.elements.keys()) this.applyNode(id);
  }

  // Another workflow was opened: what the last run showed belongs to nodes that may share only their ids.
  forget() {
    this.errors.clear();
    this.startRun();
  }

  endRun(type) {
    this.running = null;
    this.showProgress(1, FINAL_TEXT[type], false);
    this.progressEl.dataset.outcome = type.replace("execution_", "");
  }

  finishRunning(state) {
    if (this.running) this.setState(this.running, state);
    this.running = null;
  }

  setState(id, state) {
    this.states.set(id, state);
    if (state !== "running") this.progress.delete(id);
    this.applyNode(id);
  }

  showProgress(fraction, text, active = true) {
    this.progressEl.dataset.active = String(active);
    delete this.progressEl.dataset.outcome;
    const bar = this.progressEl.querySelector(".progress-bar");
    bar.style.width = fraction === null ? (active ? "100%" : "0") : `${Math.round(fraction * 100)}%`;
    bar.classList.toggle("indeterminate", fraction === null && active);
    this.progressEl.querySelector(".progress-text").textContent = text;
  }

  // --- errors ---------------------------------------------------------------------------------------------------

  // Issues as issuesFrom() lists them: {node_id, input, message}. Returns the messages that belong to no node on the
  // canvas (the workflow as a whole).
  showIssues(issues) {
    const general = [];
    for (const issue of issues) {
      if (issue.node_id && this.editor.elements.has(issue.node_id)) this.setError(issue.node_id, issue.input, issue.message);
      else general.push(issue.node_id ? `${issue.node_id}: ${issue.message}` : issue.message);
    }
    return general;
  }

  setError(id, input, message) {
    if (!id) return;
    const entry = this.errors.get(id) ?? { message: null, inputs: new Map() };
    if (input) entry.inputs.set(input, message);
    else entry.message = message;
    this.errors.set(id, entry);
    this.applyNode(id);
  }

  clearErrors() {
    const ids = [...this.errors.keys()];
    this.errors.clear();
    for (const id of ids) this.applyNode(id);
  }

  // An edited input no longer shows the error it had.
  clearInputError(id, input) {
    const entry = this.errors.get(id);
    if (!entry?.inputs.delete(input)) return;
    if (!entry.inputs.size && !entry.message) this.errors.delete(id);
    this.applyNode(id);
  }

  // --- drawing onto the node elements -----------------------------------------------------------------------------

  decorate(elements) {
    for (const id of elements.keys()) this.applyNode(id);
  }

  applyNode(id) {
    const el = this.editor.elements.get(id);
    if (!el) return; // the node was deleted or renamed since the run was queued
    const state = this.states.get(id) ?? "";
    el.dataset.state = state;
    el.querySelector(".node-badge").textContent = state;
    const fraction = this.progress.get(id);
    el.querySelector(".node-progress").classList.toggle("visible", fraction !== undefined);
    el.querySelector(".node-progress-bar").style.width = `${Math.round((fraction ?? 0) * 100)}%`;

    const preview = el.querySelector(".latent-preview");
    const url = this.previews.get(id);
    preview.hidden = !url;
    if (url && preview.getAttribute("src") !== url) preview.src = url;

    const box = el.querySelector(".node-images");
    const refs = this.images.get(id) ?? [];
    const wanted = refs.map(viewUrl);
    const shown = [...box.querySelectorAll("img")].map((img) => img.getAttribute("src"));
    if (wanted.join("\n") !== shown.join("\n")) {
      box.replaceChildren(...refs.map((ref) => {
        const img = document.createElement("img");
        Object.assign(img, { className: "output-image", src: viewUrl(ref), alt: ref.filename, title: ref.filename });
        return img;
      }));
    }
    this.applyErrors(el, this.errors.get(id));
  }

  applyErrors(el, entry) {
    el.classList.toggle("has-error", Boolean(entry));
    const messages = el.classList.contains("unknown-type") ? [`unknown node type ${el.dataset.type}`] : [];
    if (entry?.message) messages.push(entry.message);
    for (const row of el.querySelectorAll("[data-input]")) {
      const message = entry?.inputs.get(row.dataset.input);
      row.classList.toggle("has-error", Boolean(message));
      const slot = row.querySelector(".input-error");
      if (slot) slot.textContent = message ?? "";
    }
    for (const [input, message] of entry?.inputs ?? []) {
      if (!el.querySelector(`[data-input="${CSS.escape(input)}"]`)) messages.push(`${input}: ${message}`);
    }
    el.querySelector(".node-message").textContent = messages.join("\n");
  }
}

// ComfyUI's node_errors ({id: {errors: [{type, message, details, extra_info: {input_name}}], class_type}}) as one
// {node_id, input, message} per error, in the order the server gave them.
export function issuesFrom(nodeErrors) {
  const issues = [];
  for (const [id, entry] of Object.entries(nodeErrors ?? {})) {
    for (const error of entry?.errors ?? []) {
      issues.push({ node_id: id, input: error.extra_info?.input_name ?? null, message: errorText(error) });
    }
  }
  return issues;
}

// ComfyUI puts a short title in "message" and the particulars in "details"; both, without saying a thing twice
// (details that only name the input add nothing where the error is shown on that input).
export function errorText(error) {
  const message = String(error?.message ?? "");
  let details = String(error?.details ?? "");
  if (details === error?.extra_info?.input_name) details = "";
  if (!message || !details) return message || details;
  if (message.includes(details) || details.includes(message)) return message;
  return `${message}: ${details}`;
}
