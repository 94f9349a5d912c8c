// Pan and zoom of the canvas: world coordinates (node positions) to screen, and back.

const MIN_ZOOM = 0.2;
const MAX_ZOOM = 2.5;
const GRID = 24;

export class Viewport {
  constructor(canvas, world) {
    this.canvas = canvas;
    this.world = world;
    this.x = 0;
    this.y = 0;
    this.zoom = 1;
  }

  get state() {
    return { x: Math.round(this.x), y: Math.round(this.y), zoom: Number(this.zoom.toFixed(3)) };
  }

  set(view) {
    if (view && [view.x, view.y, view.zoom].every(Number.isFinite)) {
      this.x = view.x;
      this.y = view.y;
      this.zoom = clamp(view.zoom);
    }
    this.apply();
  }

  apply() {
    this.world.style.transform = `translate(${this.x}px, ${this.y}px) scale(${this.zoom})`;
    const grid = GRID * this.zoom; // the dot grid moves and scales with the world
    this.canvas.style.backgroundSize = `${grid}px ${grid}px`;
    this.canvas.style.backgroundPosition = `${this.x}px ${this.y}px`;
  }

  toWorld(clientX, clientY) {
    const box = this.canvas.getBoundingClientRect();
    return [(clientX - box.left - this.x) / this.zoom, (clientY - box.top - this.y) / this.zoom];
  }

  panBy(dx, dy) {
    this.x += dx;
    this.y += dy;
    this.apply();
  }

  // Zoom keeping the world point under the pointer where it is.
  zoomAt(clientX, clientY, factor) {
    const box = this.canvas.getBoundingClientRect();
    const [wx, wy] = this.toWorld(clientX, clientY);
    this.zoom = clamp(this.zoom * factor);
    this.x = clientX - box.left - wx * this.zoom;
    this.y = clientY - box.top - wy * this.zoom;
    this.apply();
  }

  // Show the world rectangle [left, top, right, bottom] whole, never zooming in past 1.
  frame([left, top, right, bottom], margin = 24) {
    const box = this.canvas.getBoundingClientRect();
    const zoom = Math.min(1, (box.width - 2 * margin) / (right - left), (box.height - 2 * margin) / (bottom - top));
    this.zoom = clamp(zoom);
    this.x = (box.width - (right - left) * this.zoom) / 2 - left * this.zoom;
    this.y = (box.height - (bottom - top) * this.zoom) / 2 - top * this.zoom;
    this.apply();
  }
}

function clamp(zoom) {
  return Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, zoom));
}
