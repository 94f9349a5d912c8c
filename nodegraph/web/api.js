// Requests to our own server: same origin only, JSON bodies sent as application/json.

export class RequestFailed extends Error {
  constructor(status, body, fallback) {
    super(body?.error?.message || fallback || `request failed (${status})`);
    this.status = status;
    this.body = body;
  }
}

async function send(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (error) {
    throw new RequestFailed(0, null, `the server does not answer (${error.message})`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) throw new RequestFailed(response.status, body, text.slice(0, 200));
  return body;
}

export const getJSON = (path) => send(path);

export const postJSON = (path, data) =>
  send(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });

export function uploadImage(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  return send("/upload/image", { method: "POST", body: form });
}

// `ref` is how the server names a file: {filename, subfolder, type}.
export function viewUrl(ref) {
  const query = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "output" });
  return `/view?${query}`;
}

// An input-folder name such as "sub/photo.png" as a /view reference.
export function inputImageRef(name) {
  const slash = name.lastIndexOf("/");
  return { filename: name.slice(slash + 1), subfolder: slash < 0 ? "" : name.slice(0, slash), type: "input" };
}
