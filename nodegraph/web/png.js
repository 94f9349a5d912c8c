// The workflows a PNG carries in its text chunks (tEXt; iTXt and zTXt are read too): nodegraph's and ComfyUI's.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const latin1 = new TextDecoder("latin1");
const utf8 = new TextDecoder("utf-8");

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate")); // zlib, as PNG uses
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// {keyword: text} of every text chunk in the PNG; throws if the bytes are not a PNG.
export async function pngTextChunks(buffer) {
  const bytes = new Uint8Array(buffer);
  if (!SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("not a PNG file");
  const view = new DataView(buffer);
  const texts = {};
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    at += 12 + length; // length, type, data, CRC
    if (type === "IEND") break;
    const zero = data.indexOf(0);
    if (zero < 0) continue;
    const keyword = latin1.decode(data.subarray(0, zero));
    if (type === "tEXt") {
      texts[keyword] = latin1.decode(data.subarray(zero + 1));
    } else if (type === "zTXt") {
      texts[keyword] = latin1.decode(await inflate(data.subarray(zero + 2)));
    } else if (type === "iTXt") {
      const compressed = data[zero + 1] === 1;
      let rest = zero + 3;
      rest = data.indexOf(0, rest) + 1; // language tag
      rest = data.indexOf(0, rest) + 1; // translated keyword
      const text = data.subarray(rest);
      texts[keyword] = utf8.decode(compressed ? await inflate(text) : text);
    }
  }
  return texts;
}

// The workflows a PNG carries, best first: its "workflow" chunk (ours, or ComfyUI's UI graph with the layout), then
// ComfyUI's "prompt" chunk (the API form, without positions). The server tells what each one is.
export async function workflowsFromPng(buffer) {
  const texts = await pngTextChunks(buffer);
  const found = [];
  const problems = [];
  for (const keyword of ["workflow", "prompt"]) {
    if (!(keyword in texts)) continue;
    try {
      found.push(JSON.parse(texts[keyword]));
    } catch (error) {
      problems.push(`its "${keyword}" chunk is not JSON (${error.message})`);
    }
  }
  if (!found.length) throw new Error(problems.join("; ") || 'this PNG carries no workflow (no "workflow" or "prompt" text chunk)');
  return found;
}
