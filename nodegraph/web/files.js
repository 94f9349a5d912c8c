// Workflow files in and out: .json files, PNGs the engine wrote, and downloads.

import { workflowFromPng } from "./png.js";

export async function readWorkflowFile(file) {
  const buffer = await file.arrayBuffer();
  const bytes = new Uint8Array(buffer, 0, Math.min(8, buffer.byteLength));
  if (file.type === "image/png" || bytes[0] === 0x89) return workflowFromPng(buffer);
  try {
    return JSON.parse(new TextDecoder().decode(buffer));
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
