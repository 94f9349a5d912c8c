// Editors for a node's constant inputs, chosen from the input's description in /object_info.

import { inputImageRef, viewUrl } from "./api.js";
import { MAX_SAFE_SEED, isSeed } from "./graph.js";

function element(tag, props = {}, children = []) {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
}

// An input's value as the server expects it: numbers stay numbers (an empty box sends null, which the server
// reports on the node), everything else as typed.
function numberFrom(text) {
  return text.trim() === "" ? null : Number(text);
}

function numberBox(spec, value) {
  const box = element("input", { type: "number", value: value ?? "" });
  if (spec.min !== undefined) box.min = spec.min;
  if (spec.max !== undefined) box.max = Math.min(spec.max, MAX_SAFE_SEED);
  box.step = spec.step ?? (spec.type === "INT" ? 1 : floatStep(spec));
  return box;
}

function floatStep(spec) {
  const range = (spec.max ?? 100) - (spec.min ?? 0);
  return range <= 2 ? 0.01 : 0.1;
}

function choiceBox(spec, value) {
  const choices = spec.choices ?? [];
  const select = element("select");
  for (const choice of choices) select.append(element("option", { value: String(choice), textContent: String(choice) }));
  if (!choices.some((c) => c === value)) {
    // A loaded workflow may name a file this server does not have: show it, so the error makes sense.
    const label = choices.length ? `${value} (missing)` : `${value || "none available"}`;
    select.prepend(element("option", { value: String(value ?? ""), textContent: label, className: "missing" }));
  }
  select.value = String(value ?? "");
  return select;
}

// Inputs that name an image in the input folder (ComfyUI marks them image_upload) get an upload button and a
// thumbnail.
export function isImageChoice(nodeInfo, name) {
  const spec = nodeInfo?.inputs?.[name];
  return Boolean(spec?.choices && spec.image_upload);
}

export function createWidget({ name, spec, value, imageChoice, randomize, onInput, onCommit, onUpload, onRandomize }) {
  const row = element("div", { className: "widget" });
  row.dataset.input = name;
  const label = element("label", { className: "widget-label", textContent: name, title: spec.description || name });
  let control;
  let read;
  if (spec.choices) {
    control = choiceBox(spec, value);
    read = () => spec.choices.find((c) => String(c) === control.value) ?? control.value;
  } else if (spec.type === "INT" || spec.type === "FLOAT") {
    control = numberBox(spec, value);
    read = () => numberFrom(control.value);
  } else if (spec.type === "BOOLEAN") {
    control = element("input", { type: "checkbox", checked: Boolean(value) });
    read = () => control.checked;
  } else if (spec.multiline) {
    control = element("textarea", { value: value ?? "", rows: 3, spellcheck: false });
    read = () => control.value;
  } else {
    control = element("input", { type: "text", value: value ?? "", spellcheck: false });
    read = () => control.value;
  }
  control.classList.add("widget-control");
  control.name = name;
  control.title = spec.description || name;
  label.htmlFor = control.id = `w-${crypto.getRandomValues(new Uint32Array(1))[0].toString(36)}`;
  control.addEventListener("input", () => onInput(read()));
  control.addEventListener("change", () => {
    onInput(read());
    onCommit();
  });
  const line = element("div", { className: "widget-line" }, [label, control]);
  row.append(line);

  if (isSeed(spec)) {
    const toggle = element("input", { type: "checkbox", checked: randomize, className: "randomize" });
    toggle.title = "Draw a new seed each time the workflow is queued";
    toggle.addEventListener("change", () => onRandomize(toggle.checked));
    row.append(element("label", { className: "widget-option" }, [toggle, " randomize after run"]));
  }
  if (imageChoice) {
    const file = element("input", { type: "file", accept: "image/png,image/jpeg,image/webp", hidden: true });
    const button = element("button", { type: "button", className: "upload", textContent: "Upload image…" });
    button.addEventListener("click", () => file.click());
    file.addEventListener("change", () => file.files[0] && onUpload(file.files[0]));
    row.append(element("div", { className: "widget-option" }, [button, file]));
    if ((spec.choices ?? []).includes(value)) {
      const thumb = element("img", { className: "input-thumb", src: viewUrl(inputImageRef(value)), alt: value });
      thumb.addEventListener("error", () => { thumb.hidden = true; }); // a file that does not decode: no broken icon
      row.append(thumb);
    }
  }
  row.append(element("div", { className: "input-error" }));
  return row;
}
