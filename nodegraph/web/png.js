// The workflow a nodegraph PNG carries in its "workflow" text chunk (tEXt; iTXt and zTXt are read too).

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

export async function workflowFromPng(buffer) {
  const texts = await pngTextChunks(buffer);
  if ("workflow" in texts) return JSON.parse(texts.workflow);
  const hint = "prompt" in texts ? " (it is a ComfyUI image: ComfyUI workflows are not supported)" : "";
  throw new Error(`this PNG carries no nodegraph workflow${hint}`);
}
