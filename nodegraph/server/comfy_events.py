"""The executor's events as ComfyUI's websocket messages, and what a prompt's history entry records of them.

ComfyUI's payloads, field for field: execution_start {prompt_id, timestamp}; execution_cached {nodes, prompt_id,
timestamp}; executing {node, display_node, prompt_id}; progress {value, max, prompt_id, node}; executed {node,
display_node, output, prompt_id} (only for nodes with a UI output, cached output nodes included); execution_success
{prompt_id, timestamp}; execution_error {prompt_id, node_id, node_type, executed, exception_message, exception_type,
traceback, current_inputs, current_outputs, timestamp}; execution_interrupted {prompt_id, node_id, node_type,
executed, timestamp}. Timestamps are milliseconds. The history keeps the messages ComfyUI keeps: start, cached and
the end. Who receives what is ComfyUI's rule too: a prompt's events go to the client that queued it; progress,
previews and execution_interrupted go to every socket when the prompt named no client.
"""

import io
import time
from dataclasses import dataclass

from nodegraph.executor import (Event, Executed, Executing, ExecutionCached, ExecutionError, ExecutionInterrupted,
                                ExecutionStart, ExecutionSuccess, NodeWarning, Progress)
from nodegraph.workflow import InvalidWorkflow, ValidWorkflow

PREVIEW_IMAGE, JPEG_FORMAT = 1, 1  # binary frames: 4-byte big-endian event type, 4-byte image format, image bytes
RECORDED = {"execution_start", "execution_cached", "execution_success", "execution_error", "execution_interrupted",
            "warning"}
ENDS = {"execution_success", "execution_error", "execution_interrupted"}


def now_ms() -> int:
    return int(time.time() * 1000)


def status_message(queue_remaining: int, sid: str | None = None) -> dict:
    """ComfyUI's status message; `sid` only in the one a socket receives when it connects."""
    data: dict = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return {"type": "status", "data": data}


def end_marker(prompt_id: str) -> dict:
    """executing with node null: ComfyUI's "this prompt is done", sent after its history entry is written."""
    return {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}


def preview_frame(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return PREVIEW_IMAGE.to_bytes(4, "big") + JPEG_FORMAT.to_bytes(4, "big") + buffer.getvalue()


@dataclass(frozen=True)
class Outgoing:
    """One message for the sockets: JSON `message`, or a binary preview `frame`."""

    message: dict | None = None
    frame: bytes | None = None
    to_all_without_client: bool = False  # ComfyUI broadcasts these when the prompt has no client_id
    final: bool = False  # the prompt's end: sent only once the store has its outcome, so /history agrees


def ui_output(output: dict) -> dict:
    """A node's UI summary as ComfyUI's clients read it: every value a list."""
    return {key: value if isinstance(value, list) else [value] for key, value in output.items()}


def format_value(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


class PromptEvents:
    """One prompt's run, followed event by event: the messages to send, and its outputs, messages and timings."""

    def __init__(self, prompt_id: str, valid: ValidWorkflow | None):
        self.prompt_id, self.valid = prompt_id, valid
        self.executed: list[str] = []  # nodes that ran to completion in this run
        self.cached: list[str] = []
        self.outputs: dict[str, dict] = {}  # node id -> UI output, for the history
        self.messages: list[list] = []  # [[type, data], ...] ComfyUI's status.messages
        self.timings: dict[str, float] = {}
        self.current: str | None = None  # the node running now
        self._started_at: dict[str, float] = {}

    def class_type(self, node_id: str | None) -> str | None:
        """The node's type as the submitted workflow names it (ComfyUI's class_type in its formats)."""
        if node_id is None or self.valid is None or node_id not in self.valid.nodes:
            return None
        node_class = self.valid.nodes[node_id].node_class
        if self.valid.format == "native":
            return node_class.TYPE
        entry = (self.valid.prompt or {}).get(node_id)
        if isinstance(entry, dict) and isinstance(entry.get("class_type"), str):
            return entry["class_type"]
        return node_class.COMFY_TYPE or node_class.TYPE

    def convert(self, event: Event) -> list[Outgoing]:
        prompt_id = self.prompt_id
        if isinstance(event, ExecutionStart):
            return [self._record("execution_start", {"prompt_id": prompt_id})]
        if isinstance(event, ExecutionCached):
            self.cached = list(event.nodes)
            return [self._record("execution_cached", {"nodes": list(event.nodes), "prompt_id": prompt_id})]
        if isinstance(event, Executing):
            self.current = event.node_id
            self._started_at[event.node_id] = time.perf_counter()
            return [Outgoing({"type": "executing", "data": {"node": event.node_id, "display_node": event.node_id,
                                                            "prompt_id": prompt_id}})]
        if isinstance(event, Progress):
            sent = [Outgoing({"type": "progress", "data": {"value": event.step, "max": event.total,
                                                           "prompt_id": prompt_id, "node": event.node_id}},
                             to_all_without_client=True)]
            if event.preview is not None:
                sent.append(Outgoing(frame=preview_frame(event.preview), to_all_without_client=True))
            return sent
        if isinstance(event, Executed):
            self.executed.append(event.node_id)
            if event.node_id in self._started_at:
                self.timings[event.node_id] = round(time.perf_counter() - self._started_at[event.node_id], 4)
            return self._executed(event.node_id, event.output)
        if isinstance(event, ExecutionSuccess):
            sent = []
            for node_id, output in event.outputs.items():  # cached output nodes: ComfyUI replays their UI output
                if node_id not in self.outputs:
                    sent += self._executed(node_id, output)
            self.current = None
            return sent + [self._record("execution_success", {"prompt_id": prompt_id}, final=True)]
        if isinstance(event, ExecutionError):
            return [self._error(event.node_id, event.message, event.traceback)]
        if isinstance(event, NodeWarning):  # ours (ComfyUI only logs these): kept in the history's messages too
            return [self._record("warning", {"prompt_id": prompt_id, "node": event.node_id,
                                             "node_type": self.class_type(event.node_id), "message": event.message})]
        if isinstance(event, ExecutionInterrupted):
            return [self._record("execution_interrupted", {
                "prompt_id": prompt_id, "node_id": event.node_id, "node_type": self.class_type(event.node_id),
                "executed": list(self.executed)}, to_all_without_client=True, final=True)]
        return []

    def invalid(self, error: InvalidWorkflow) -> list[Outgoing]:
        """A prompt valid when queued that no longer is (a file it names was removed since): start, then error."""
        first = next((issue for issue in error.issues if issue.node_id is not None), None)
        return [self._record("execution_start", {"prompt_id": self.prompt_id}),
                self._error(first.node_id if first else None, f"InvalidWorkflow: {error}", "")]

    def _executed(self, node_id: str, output: dict) -> list[Outgoing]:
        if not output:
            return []  # ComfyUI sends executed only for nodes with something to show
        self.outputs[node_id] = ui_output(output)
        return [Outgoing({"type": "executed", "data": {"node": node_id, "display_node": node_id,
                                                       "output": self.outputs[node_id], "prompt_id": self.prompt_id}})]

    def _error(self, node_id: str | None, message: str, trace: str) -> Outgoing:
        exception_type, _, exception_message = message.partition(": ")
        if not exception_message:  # not "Type: message": the executor's message is all there is
            exception_type, exception_message = "Exception", message
        planned = self.valid.nodes.get(node_id) if self.valid is not None and node_id is not None else None
        inputs = {name: [format_value(value)] for name, value in (planned.constants if planned else {}).items()}
        return self._record("execution_error", {
            "prompt_id": self.prompt_id, "node_id": node_id, "node_type": self.class_type(node_id),
            "executed": list(self.executed), "exception_message": exception_message,
            "exception_type": exception_type, "traceback": trace.splitlines(keepends=True), "current_inputs": inputs,
            "current_outputs": list(dict.fromkeys(self.cached + self.executed))}, final=True)

    def _record(self, kind: str, data: dict, to_all_without_client: bool = False, final: bool = False) -> Outgoing:
        data["timestamp"] = now_ms()
        self.messages.append([kind, data])
        return Outgoing({"type": kind, "data": data}, to_all_without_client=to_all_without_client, final=final)
