// Undo by snapshots: every finished edit commits the graph; undo goes back to the commit before it.

const DEPTH = 100;

export class UndoStack {
  constructor(onChange) {
    this.past = [];
    this.current = null;
    this.onChange = onChange;
  }

  // The state after an edit. Returns false when nothing changed (a click that moved nothing is no edit).
  commit(snapshot) {
    const text = JSON.stringify(snapshot);
    if (text === this.current) return false;
    if (this.current !== null) this.past.push(this.current);
    if (this.past.length > DEPTH) this.past.shift();
    this.current = text;
    this.onChange();
    return true;
  }

  // Start over from `snapshot` with nothing to undo (a page load).
  reset(snapshot) {
    this.past = [];
    this.current = JSON.stringify(snapshot);
    this.onChange();
  }

  get canUndo() {
    return this.past.length > 0;
  }

  // The snapshot to go back to, or null.
  undo() {
    if (!this.past.length) return null;
    this.current = this.past.pop();
    this.onChange();
    return JSON.parse(this.current);
  }
}
