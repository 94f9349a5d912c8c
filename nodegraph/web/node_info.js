// Node descriptions as the server sends them (ComfyUI's /object_info entries, keyed by our native type names)
// turned into what the editor draws: which inputs are sockets and which are widgets, with their bounds and defaults.
//
// An entry's input is {required: {name: [TYPE or [choices...], options]}, optional: {...}}. As ComfyUI's own
// frontend does it, INT, FLOAT, STRING, BOOLEAN and combo lists are widgets (constants typed into the node), every
// other upper-case type is a socket to link.

const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN"]);

// The editor's view of one input: {kind: "link" | "constant", type, default?, min?, max?, step?, choices?, multiline,
// control_after_generate, image_upload, optional, description}.
export function inputSpec(declaration, optional) {
  const [type, options = {}] = Array.isArray(declaration) ? declaration : [declaration];
  const spec = { optional, description: options.tooltip ?? "" };
  if (Array.isArray(type) || type === "COMBO") {
    const choices = Array.isArray(type) ? type : options.options ?? [];
    Object.assign(spec, { kind: "constant", type: "COMBO", choices });
  } else if (WIDGET_TYPES.has(type) && !options.forceInput) {
    Object.assign(spec, { kind: "constant", type });
    for (const key of ["min", "max", "step"]) if (typeof options[key] === "number") spec[key] = options[key];
  } else {
    Object.assign(spec, { kind: "link", type: String(type) });
  }
  if ("default" in options) spec.default = options.default;
  spec.multiline = Boolean(options.multiline);
  spec.control_after_generate = Boolean(options.control_after_generate);
  spec.image_upload = Boolean(options.image_upload);
  return spec;
}

// The declared order: input_order where the server gives it, else the keys as sent (required first).
function orderedInputs(entry) {
  const groups = [["required", false], ["optional", true]];
  const inputs = {};
  for (const [group, optional] of groups) {
    const declared = entry.input?.[group] ?? {};
    const order = entry.input_order?.[group] ?? Object.keys(declared);
    for (const name of order) if (name in declared) inputs[name] = inputSpec(declared[name], optional);
  }
  return inputs;
}

// {type: {type, title, category, description, output_node, inputs: {name: spec}, outputs: {name: socket type}}}
export function nodeInfoFrom(objectInfo) {
  const info = {};
  for (const [type, entry] of Object.entries(objectInfo ?? {})) {
    const outputs = {};
    (entry.output ?? []).forEach((socket, index) => {
      outputs[entry.output_name?.[index] ?? String(socket)] = Array.isArray(socket) ? "COMBO" : String(socket);
    });
    info[type] = {
      type,
      title: entry.display_name || type,
      category: entry.category ?? "",
      description: entry.description ?? "",
      output_node: Boolean(entry.output_node),
      inputs: orderedInputs(entry),
      outputs,
    };
  }
  return info;
}
