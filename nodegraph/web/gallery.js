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

  // The images of finished prompts from /history (newest prompt first).
  addHistory(history) {
    const refs = [];
    for (const entry of Object.values(history)) {
      for (const output of Object.values(entry.outputs ?? {})) refs.unshift(...(output.images ?? []).slice().reverse());
    }
    this.add(refs);
  }
}
