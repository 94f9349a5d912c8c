"""The durable queue and history: one SQLite file under the data directory.

Every prompt is one row from the moment it is queued; its status moves pending -> running -> success | error |
interrupted | cancelled. Each change is committed before it is acted on, so a server killed at any moment (SIGKILL
included) comes back with the same queue and history: `recover()` reports a prompt left running as interrupted and
queues it again, at its old place in line.
"""

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    number      INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
    prompt_id   TEXT NOT NULL UNIQUE,
    client_id   TEXT,
    workflow    TEXT NOT NULL,
    status      TEXT NOT NULL,
    queued_at   REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    outputs     TEXT NOT NULL DEFAULT '{}',
    error       TEXT,
    messages    TEXT NOT NULL DEFAULT '[]',           -- [[event, data], ...] as ComfyUI's history shows them
    timings     TEXT NOT NULL DEFAULT '{}'            -- node id -> seconds
);
CREATE INDEX IF NOT EXISTS prompts_by_status ON prompts (status, number);
"""
FINISHED = ("success", "error", "interrupted", "cancelled")


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "PromptRecord":
        values = dict(row)
        for key in ("workflow", "outputs", "error", "messages", "timings"):
            if values[key] is not None:
                values[key] = json.loads(values[key])
        return cls(**values)

    def summary(self) -> dict:
        """What /queue lists for a prompt."""
        return {"prompt_id": self.prompt_id, "number": self.number, "client_id": self.client_id,
                "queued_at": self.queued_at, "started_at": self.started_at}

    def history_entry(self) -> dict:
        """What /history shows for a prompt."""
        return {
            "prompt_id": self.prompt_id, "number": self.number, "client_id": self.client_id, "workflow": self.workflow,
            "status": {"status_str": self.status, "completed": self.status == "success", "messages": self.messages},
            "outputs": self.outputs, "error": self.error, "timings": {
                "queued_at": self.queued_at, "started_at": self.started_at, "finished_at": self.finished_at,
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
        self._work = threading.Condition()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def enqueue(self, workflow: dict, client_id: str | None) -> PromptRecord:
        prompt_id = uuid.uuid4().hex
        self._execute("INSERT INTO prompts (prompt_id, client_id, workflow, status, queued_at) VALUES (?, ?, ?, 'pending', ?)",
                      (prompt_id, client_id, json.dumps(workflow), time.time()))
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
                    rows = self._db.execute("SELECT * FROM prompts WHERE status = 'pending' ORDER BY number LIMIT 1").fetchall()
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
        """Cancel those of `prompt_ids` still pending; returns the ones cancelled."""
        cancelled = []
        for prompt_id in prompt_ids:
            rows = self._execute("UPDATE prompts SET status = 'cancelled', finished_at = ? WHERE prompt_id = ? "
                                 "AND status = 'pending' RETURNING prompt_id", (time.time(), prompt_id))
            cancelled += [row["prompt_id"] for row in rows]
        return cancelled

    def queue(self) -> tuple[list[PromptRecord], list[PromptRecord]]:
        """(running, pending), each in queue order."""
        rows = self._execute("SELECT * FROM prompts WHERE status IN ('running', 'pending') ORDER BY number")
        records = [PromptRecord.from_row(row) for row in rows]
        return [r for r in records if r.status == "running"], [r for r in records if r.status == "pending"]

    def pending_count(self) -> int:
        return self._execute("SELECT COUNT(*) FROM prompts WHERE status IN ('running', 'pending')")[0][0]

    def history(self, limit: int = 100) -> list[PromptRecord]:
        """Finished prompts, newest first."""
        rows = self._execute(f"SELECT * FROM prompts WHERE status IN {FINISHED} ORDER BY number DESC LIMIT ?", (limit,))
        return [PromptRecord.from_row(row) for row in rows]

    def recover(self) -> list[str]:
        """After a crash: every prompt left running is reported interrupted and queued again. Returns their ids."""
        rows = self._execute("SELECT prompt_id, messages FROM prompts WHERE status = 'running'")
        for row in rows:
            messages = json.loads(row["messages"]) + [["execution_interrupted", {
                "prompt_id": row["prompt_id"], "reason": "the server stopped while it ran; queued again",
                "timestamp": time.time()}]]
            self._execute("UPDATE prompts SET status = 'pending', started_at = NULL, messages = ? WHERE prompt_id = ?",
                          (json.dumps(messages), row["prompt_id"]))
        return [row["prompt_id"] for row in rows]
