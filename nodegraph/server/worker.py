"""The worker thread: runs queued prompts one at a time and reports to the hub on the event loop."""

import asyncio
import gc
import logging
import sys
import threading

from nodegraph.executor import Event, Executor, Interrupted, NodeFailed
from nodegraph.server.comfy_events import Outgoing, PromptEvents, end_marker, status_message
from nodegraph.server.hub import Hub
from nodegraph.store import PromptRecord, Store
from nodegraph.workflow import InvalidWorkflow

log = logging.getLogger("nodegraph.server")


class Worker:
    """Runs queued prompts one at a time in a thread, reporting to the hub on the event loop."""

    def __init__(self, executor: Executor, store: Store, hub: Hub, loop: asyncio.AbstractEventLoop):
        self.executor, self.store, self.hub, self.loop = executor, store, hub, loop
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="nodegraph-worker", daemon=True)
        self._lock = threading.Lock()  # the running prompt changes and interrupts are checked under it
        self.running: PromptRecord | None = None
        self.events: PromptEvents | None = None  # the running prompt's, for a socket that reconnects mid-run
        self._free_requested = False

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.executor.interrupt()
        self.thread.join(timeout=30)

    @property
    def running_id(self) -> str | None:
        running = self.running
        return running.prompt_id if running else None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop the running prompt (only if it is `prompt_id`, when given); False if there was none to stop.

        Checked under the lock that changes the running prompt, so an interrupt meant for one prompt never lands on
        the next (each run clears the executor's interrupt flag when it starts)."""
        with self._lock:
            if self.running is None or (prompt_id is not None and self.running.prompt_id != prompt_id):
                return False
            self.executor.interrupt()
            return True

    def request_free(self) -> None:
        """Drop the executor's cached outputs (loaded models included) once no prompt runs (ComfyUI's /free)."""
        self._free_requested = True

    def current_node(self, client_id: str) -> tuple[str, str] | None:
        """(prompt id, node id) running now for `client_id`, for a socket of it that connects mid-run."""
        running, events = self.running, self.events
        if running is None or events is None or running.client_id != client_id or events.current is None:
            return None
        return running.prompt_id, events.current

    # --- on the event loop ------------------------------------------------------------------------------------

    def _post(self, callback, *args) -> None:
        self.loop.call_soon_threadsafe(callback, *args)

    def broadcast_status(self) -> None:
        self._post(self.hub.broadcast, status_message(self.store.pending_count()))

    def _deliver(self, client_id: str | None, outgoing: Outgoing) -> None:
        if outgoing.frame is not None:
            if client_id is not None or outgoing.to_all_without_client:
                self._post(self.hub.send_preview, client_id, outgoing.frame)
        elif client_id is not None:
            progress = outgoing.message["type"] == "progress"
            self._post(self.hub.send, client_id, outgoing.message, not progress)
        elif outgoing.to_all_without_client:
            self._post(self.hub.broadcast, outgoing.message)

    # --- in the thread ----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if self._free_requested:
                self._free_memory()
            record = self.store.take_next(timeout=0.5)
            if record is None:
                continue
            with self._lock:
                self.running = record
            try:
                self._run(record)
            except Exception as error:  # never let one prompt kill the worker, nor stay "running" forever
                log.exception("worker failed on prompt %s", record.prompt_id)
                self.store.finish(record.prompt_id, "error", error={"message": f"{type(error).__name__}: {error}"},
                                  messages=record.messages)
                self.broadcast_status()
                if record.client_id is not None:
                    self._post(self.hub.send, record.client_id, end_marker(record.prompt_id))
            finally:
                with self._lock:
                    self.running, self.events = None, None

    def _free_memory(self) -> None:
        self._free_requested = False
        self.executor.cache.clear()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def _run(self, record: PromptRecord) -> None:
        self.broadcast_status()
        client, final = record.client_id, []

        def emit(outgoing: Outgoing) -> None:
            if outgoing.final:
                final.append(outgoing)  # sent once the store has the outcome, so /history agrees with the socket
            else:
                self._deliver(client, outgoing)

        def on_event(event: Event) -> None:
            for outgoing in events.convert(event):
                emit(outgoing)

        error = None
        try:
            valid = self.executor.validate(record.workflow)
        except InvalidWorkflow as invalid:  # valid when queued, no longer (a file was removed since)
            events = PromptEvents(record.prompt_id, None)
            for outgoing in events.invalid(invalid):
                emit(outgoing)
            status, error = "error", {"message": str(invalid), "issues": [i.to_dict() for i in invalid.issues]}
        else:
            events = self.events = PromptEvents(record.prompt_id, valid)
            try:
                self.executor.run(valid, on_event=on_event, run_id=record.prompt_id, extra_data=record.extra_data,
                                  targets=record.outputs_to_execute or None)
                status = "success"
            except NodeFailed as failed:
                status, error = "error", {"node_id": failed.node_id, "node_type": failed.node_type,
                                          "message": failed.message, "traceback": failed.traceback}
            except Interrupted:
                if self.stopping.is_set():
                    return  # the server is shutting down: left running, recover() queues it again at the next start
                status = "interrupted"
        self.store.finish(record.prompt_id, status, outputs=events.outputs, error=error,
                          messages=record.messages + events.messages, timings=events.timings)
        for outgoing in final:
            self._deliver(client, outgoing)
        self.broadcast_status()
        if client is not None:  # ComfyUI's end marker, after the history entry and the status
            self._post(self.hub.send, client, end_marker(record.prompt_id))
