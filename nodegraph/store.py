"""The durable queue and history: one SQLite file under the data directory.

Every prompt is one row from the moment it is queued; its status moves pending -> running -> success | error |
interrupted. Each change is committed before it is acted on, so a server killed at any moment (SIGKILL included)
comes back with the same queue and history: `recover()` reports a prompt left running as interrupted and queues it
again, at its old place in line. A prompt deleted from the queue, or from the history, is gone (as in ComfyUI).

Queue order is ComfyUI's: by priority number (by default the order of arrival; `front` puts a prompt before every
other; a client may give its own number), then by arrival.
"""

import json
import math
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    number      INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of arrival
    prompt_id   TEXT NOT NULL UNIQUE,
    client_id   TEXT,
    workflow    TEXT NOT NULL,                      -- as submitted, in any format
    status      TEXT NOT NULL,
    queued_at   REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    outputs     TEXT NOT NULL DEFAULT '{}',
    error       TEXT,
    messages    TEXT NOT NULL DEFAULT '[]',           -- [[event, data], ...] as ComfyUI's history shows them
    timings     TEXT NOT NULL DEFAULT '{}'            -- node id -> seconds
);
"""
# Columns added since the first release: an older database file gets them on open (ALTER TABLE), its rows the defaults.
ADDED_COLUMNS = {
    "prompt": "TEXT NOT NULL DEFAULT '{}'",  # the same graph in ComfyUI's API form (what /queue and /history show)
    "extra_data": "TEXT NOT NULL DEFAULT '{}'",  # ComfyUI's extra_data (client_id, create_time, extra_pnginfo, ...)
    "outputs_to_execute": "TEXT NOT NULL DEFAULT '[]'",  # output node ids to run (ComfyUI's partial execution)
    "priority": "REAL",  # ComfyUI's queue number; NULL: the order of arrival
    "format": "TEXT NOT NULL DEFAULT 'native'",  # native, api or ui: the format the workflow came in
}
INDEX = "CREATE INDEX IF NOT EXISTS prompts_by_status ON prompts (status, number)"
FINISHED = ("success", "error", "interrupted")
QUEUE_ORDER = "ORDER BY COALESCE(priority, number), number"
JSON_COLUMNS = ("workflow", "outputs", "error", "messages", "timings", "prompt", "extra_data", "outputs_to_execute")


class DuplicatePromptId(ValueError):
    """A client-chosen prompt id that is already in the queue or the history."""


@dataclass
class PromptRecord:
    number: int
    prompt_id: str
    client_id: str | None
    workflow: dict
    status: str
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    outputs: dict = field(default_factory=dict)
    error: dict | None = None
    messages: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    prompt: dict = field(default_factory=dict)
    extra_data: dict = field(default_factory=dict)
    outputs_to_execute: list = field(default_factory=list)
    priority: float | None = None
    format: str = "native"

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "PromptRecord":
        values = dict(row)
        for key in JSON_COLUMNS:
            if values.get(key) is not None:
                values[key] = json.loads(values[key])
        return cls(**values)

    @property
    def queue_number(self) -> int | float:
        """ComfyUI's "number" of the prompt: its place in the queue's order."""
        number = self.number if self.priority is None else self.priority
        return int(number) if float(number).is_integer() else number

    def queue_item(self) -> list:
        """ComfyUI's 5-item queue entry: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
        return [self.queue_number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]

    def history_entry(self) -> dict:
        """ComfyUI's history entry, with our own keys: the workflow as submitted, its format, timings."""
        success = self.status == "success"
        return {
            "prompt": self.queue_item(),
            "outputs": self.outputs,
            "status": {"status_str": "success" if success else "error", "completed": success,
                       "messages": self.messages},
            "meta": {node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
                     for node in self.outputs},
            "workflow": self.workflow,
            "format": self.format,
            "timings": {"queued_at": self.queued_at, "started_at": self.started_at, "finished_at": self.finished_at,
                        "nodes": self.timings},
        }


class Store:
    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection shared by the event loop and the worker thread
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")  # a committed row survives the process being killed
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._db.execute(INDEX)
        self._work = threading.Condition()

    def _migrate(self) -> None:
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(prompts)")}
        for name, declaration in ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE prompts ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def enqueue(self, workflow: dict, client_id: str | None = None, *, prompt: dict | None = None,
                extra_data: dict | None = None, outputs_to_execute: list | None = None, prompt_id: str | None = None,
                number: float | None = None, front: bool = False, format: str = "native") -> PromptRecord:
        """Queue a prompt. `number` places it by ComfyUI's queue number; `front` before every other (when no
        number is given). Raises DuplicatePromptId for a `prompt_id` already used."""
        if number is not None and not math.isfinite(number):
            raise ValueError(f"queue number must be finite, got {number!r}")
        prompt_id = prompt_id or str(uuid.uuid4())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT INTO prompts (prompt_id, client_id, workflow, status, queued_at, prompt, extra_data, "
                    "outputs_to_execute, format) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                    (prompt_id, client_id, json.dumps(workflow), time.time(), json.dumps(prompt or {}),
                     json.dumps(extra_data or {}), json.dumps(outputs_to_execute or []), format))
                priority = float(number) if number is not None else (-cursor.lastrowid if front else None)
                if priority is not None:
                    self._db.execute("UPDATE prompts SET priority = ? WHERE number = ?", (priority, cursor.lastrowid))
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise DuplicatePromptId(f"prompt id {prompt_id!r} is already in the queue or the history") from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        with self._work:
            self._work.notify_all()
        return self.get(prompt_id)

    def get(self, prompt_id: str) -> PromptRecord | None:
        rows = self._execute("SELECT * FROM prompts WHERE prompt_id = ?", (prompt_id,))
        return PromptRecord.from_row(rows[0]) if rows else None

    def take_next(self, timeout: float | None = None) -> PromptRecord | None:
        """Mark the first pending prompt running and return it; wait up to `timeout` seconds for one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    rows = self._db.execute(f"SELECT * FROM prompts WHERE status = 'pending' {QUEUE_ORDER} LIMIT 1"
                                            ).fetchall()
                    if rows:
                        self._db.execute("UPDATE prompts SET status = 'running', started_at = ? WHERE number = ?",
                                         (time.time(), rows[0]["number"]))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            if rows:
                return self.get(rows[0]["prompt_id"])
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            with self._work:
                self._work.wait(timeout=0.5 if remaining is None else min(remaining, 0.5))

    def finish(self, prompt_id: str, status: str, outputs: dict | None = None, error: dict | None = None,
               messages: list | None = None, timings: dict | None = None) -> None:
        assert status in FINISHED, status
        self._execute("UPDATE prompts SET status = ?, finished_at = ?, outputs = ?, error = ?, messages = ?, timings = ? "
                      "WHERE prompt_id = ?", (status, time.time(), json.dumps(outputs or {}),
                                              None if error is None else json.dumps(error), json.dumps(messages or []),
                                              json.dumps(timings or {}), prompt_id))

    def cancel(self, prompt_ids: list[str]) -> list[str]:
        """Remove those of `prompt_ids` still pending from the queue; returns the ones removed."""
        removed = []
        for prompt_id in prompt_ids:
            rows = self._execute("DELETE FROM prompts WHERE prompt_id = ? AND status = 'pending' RETURNING prompt_id",
                                 (prompt_id,))
            removed += [row["prompt_id"] for row in rows]
        return removed

    def clear_queue(self) -> list[str]:
        """Remove every pending prompt (the running one stays: interrupt it); returns their ids."""
        return [row["prompt_id"] for row in self._execute("DELETE FROM prompts WHERE status = 'pending' "
                                                          "RETURNING prompt_id")]

    def queue(self) -> tuple[list[PromptRecord], list[PromptRecord]]:
        """(running, pending), each in queue order."""
        rows = self._execute(f"SELECT * FROM prompts WHERE status IN ('running', 'pending') {QUEUE_ORDER}")
        records = [PromptRecord.from_row(row) for row in rows]
        return [r for r in records if r.status == "running"], [r for r in records if r.status == "pending"]

    def pending_count(self) -> int:
        """Prompts not finished yet, the running one included (ComfyUI's queue_remaining)."""
        return self._execute("SELECT COUNT(*) FROM prompts WHERE status IN ('running', 'pending')")[0][0]

    def history(self, max_items: int | None = None, offset: int | None = None) -> list[PromptRecord]:
        """Finished prompts in the order they finished, as ComfyUI lists them: the last `max_items` ones, or
        `max_items` from the `offset`-th on."""
        if offset is None or offset < 0:
            total = self._execute(f"SELECT COUNT(*) FROM prompts WHERE status IN {FINISHED}")[0][0]
            offset = max(0, total - max_items) if max_items is not None else 0
        rows = self._execute(f"SELECT * FROM prompts WHERE status IN {FINISHED} ORDER BY finished_at, number "
                             "LIMIT ? OFFSET ?", (-1 if max_items is None else max_items, offset))
        return [PromptRecord.from_row(row) for row in rows]

    def finished(self, prompt_id: str) -> PromptRecord | None:
        """The history entry of one prompt; None while it is queued or running, or when there is none."""
        record = self.get(prompt_id)
        return record if record is not None and record.status in FINISHED else None

    def delete_history(self, prompt_ids: list[str] | None = None) -> int:
        """Forget these finished prompts (None: all of them); returns how many were forgotten."""
        if prompt_ids is None:
            return len(self._execute(f"DELETE FROM prompts WHERE status IN {FINISHED} RETURNING number"))
        return sum(len(self._execute(f"DELETE FROM prompts WHERE prompt_id = ? AND status IN {FINISHED} "
                                     "RETURNING number", (prompt_id,))) for prompt_id in prompt_ids)

    def recover(self) -> list[str]:
        """After a crash: every prompt left running is reported interrupted and queued again. Returns their ids."""
        rows = self._execute("SELECT prompt_id, messages FROM prompts WHERE status = 'running'")
        for row in rows:
            messages = json.loads(row["messages"]) + [["execution_interrupted", {
                "prompt_id": row["prompt_id"], "node_id": None, "node_type": None, "executed": [],
                "timestamp": int(time.time() * 1000), "reason": "the server stopped while it ran; queued again"}]]
            self._execute("UPDATE prompts SET status = 'pending', started_at = NULL, messages = ? WHERE prompt_id = ?",
                          (json.dumps(messages), row["prompt_id"]))
        return [row["prompt_id"] for row in rows]
