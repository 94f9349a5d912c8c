// Workflow files in and out: .json files and PNGs (ours and ComfyUI's), and downloads.

import { workflowsFromPng } from "./png.js";

// The workflow data a file holds, best first (a ComfyUI PNG holds two); still in the file's own format.
export async function readWorkflowFile(file) {
  const buffer = await file.arrayBuffer();
  const bytes = new Uint8Array(buffer, 0, Math.min(8, buffer.byteLength));
  if (file.type === "image/png" || bytes[0] === 0x89) return workflowsFromPng(buffer);
  try {
    return [JSON.parse(new TextDecoder().decode(buffer))];
  } catch (error) {
    throw new Error(`${file.name} is not JSON: ${error.message}`);
  }
}

export function downloadWorkflow(workflow, name = "workflow.json") {
  const blob = new Blob([JSON.stringify(workflow, null, 2) + "\n"], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
