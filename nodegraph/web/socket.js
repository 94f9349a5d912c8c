// The server's websocket, reconnecting with backoff: JSON events, and binary latent previews.

const PREVIEW_IMAGE = 1;
const FORMATS = { 1: "image/jpeg", 2: "image/png" };
const FIRST_RETRY_MS = 500;
const LAST_RETRY_MS = 8000;

export class ServerSocket {
  // handlers: onEvent({type, data}), onPreview(Blob), onOpen(reconnected: bool), onClose()
  constructor(clientId, handlers) {
    this.clientId = clientId;
    this.handlers = handlers;
    this.retryMs = FIRST_RETRY_MS;
    this.everOpened = false;
  }

  connect() {
    // previews=1: the live latent previews come as binary frames (ComfyUI sends them only with --preview-method).
    const url = new URL(`/ws?clientId=${encodeURIComponent(this.clientId)}&previews=1`, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      this.retryMs = FIRST_RETRY_MS;
      this.handlers.onOpen(this.everOpened);
      this.everOpened = true;
    };
    ws.onmessage = (message) => {
      if (typeof message.data === "string") this.handlers.onEvent(JSON.parse(message.data));
      else this.readFrame(message.data);
    };
    ws.onclose = () => {
      this.handlers.onClose();
      setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, LAST_RETRY_MS);
    };
  }

  // Bytes 0-3: event type (big-endian), 4-7: image format, then the image.
  readFrame(buffer) {
    if (buffer.byteLength < 8) return;
    const header = new DataView(buffer);
    if (header.getUint32(0) !== PREVIEW_IMAGE) return;
    const type = FORMATS[header.getUint32(4)];
    if (type) this.handlers.onPreview(new Blob([buffer.slice(8)], { type }));
  }
}
