// The recent results, newest first; each opens full size in a new tab.

import { viewUrl } from "./api.js";

const KEEP = 40;

export class Gallery {
  constructor(list) {
    this.list = list;
  }

  // refs: [{filename, subfolder, type}], newest last (as a run reports them).
  add(refs) {
    for (const ref of refs) {
      const url = viewUrl(ref);
      if (this.list.querySelector(`a[href="${CSS.escape(url)}"]`)) continue;
      const link = Object.assign(document.createElement("a"), { className: "result", href: url, target: "_blank", rel: "noopener", title: ref.filename });
      link.append(Object.assign(document.createElement("img"), { src: url, alt: ref.filename, loading: "lazy" }));
      this.list.prepend(link);
    }
    while (this.list.children.length > KEEP) this.list.lastElementChild.remove();
  }

  // The images of finished prompts from /history (ComfyUI's shape: entry.prompt[0] is the queue number).
  addHistory(history) {
    const entries = Object.values(history ?? {}).sort((a, b) => (a.prompt?.[0] ?? 0) - (b.prompt?.[0] ?? 0));
    const refs = [];
    for (const entry of entries) {
      for (const output of Object.values(entry.outputs ?? {})) refs.push(...(output.images ?? []));
    }
    this.add(refs);
  }
}
