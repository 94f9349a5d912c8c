// What a run looks like on the graph: node states, progress, the live latent preview, the images made, and the
// errors on the node and input they belong to. Kept apart from the nodes' DOM, so a re-render shows it again.

import { viewUrl } from "./api.js";

const FINAL_TEXT = { execution_success: "Done", execution_error: "Failed", execution_interrupted: "Stopped" };

export class RunView {
  constructor(editor, gallery, progressEl, queueSizeEl) {
    this.editor = editor;
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

  // --- websocket events -----------------------------------------------------------------------------------------

  handle({ type, data }) {
    if (data?.prompt_id) this.seen.add(data.prompt_id);
    switch (type) {
      case "status":
        this.queueSizeEl.textContent = `queue ${data.status?.exec_info?.queue_remaining ?? 0}`;
        break;
      case "execution_start":
        this.startRun();
        this.showProgress(0, "Starting");
        break;
      case "execution_cached":
        for (const id of data.nodes ?? []) this.setState(id, "cached");
        break;
      case "executing":
        this.finishRunning("done");
        if (data.node) {
          this.running = data.node;
          this.setState(data.node, "running");
          this.showProgress(null, `Running ${data.node_type ?? data.node}`);
        }
        break;
      case "progress":
        this.previewNode = data.node;
        this.progress.set(data.node, data.step / data.total);
        this.applyNode(data.node);
        this.showProgress(data.step / data.total, `${data.node}: step ${data.step}/${data.total}`);
        break;
      case "executed":
        this.setState(data.node, "done");
        if (data.output?.images?.length) {
          this.images.set(data.node, data.output.images);
          this.applyNode(data.node);
          this.gallery.add(data.output.images);
        }
        break;
      case "execution_error":
        this.finishRunning("error");
        if (data.node_errors?.length) this.showIssues(data.node_errors);
        else this.setError(data.node, null, data.message);
        this.endRun(type);
        break;
      case "execution_interrupted":
        this.finishRunning("interrupted");
        this.endRun(type);
        break;
      case "execution_success":
        this.finishRunning("done");
        for (const [id, output] of Object.entries(data.outputs ?? {})) {
          if (!output?.images?.length || this.images.has(id)) continue;
          this.images.set(id, output.images); // an output node served from the cache still shows its images
          this.applyNode(id);
          this.gallery.add(output.images);
        }
        this.endRun(type);
        break;
    }
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

  // Records as /validate, /prompt and execution_error give them: {node_id, node_type, input, code, message}.
  // Returns the messages that belong to no node on the canvas (the workflow as a whole).
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
