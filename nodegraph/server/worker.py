"""The worker thread: runs queued prompts one at a time and reports to the hub on the event loop."""

import asyncio
import json
import logging
import threading
import time

from nodegraph.executor import Event, Executor, Interrupted, NodeFailed, Progress
from nodegraph.server.hub import Hub, event_message, preview_frame, status_message
from nodegraph.store import Store
from nodegraph.workflow import InvalidWorkflow

log = logging.getLogger("nodegraph.server")
END_EVENTS = {"execution_success", "execution_error", "execution_interrupted"}


class Worker:
    """Runs queued prompts one at a time in a thread, reporting to the hub on the event loop."""

    def __init__(self, executor: Executor, store: Store, hub: Hub, loop: asyncio.AbstractEventLoop):
        self.executor, self.store, self.hub, self.loop = executor, store, hub, loop
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="nodegraph-worker", daemon=True)
        self.running_id: str | None = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.executor.interrupt()
        self.thread.join(timeout=30)

    def _post(self, callback, *args) -> None:
        self.loop.call_soon_threadsafe(callback, *args)

    def broadcast_status(self) -> None:
        self._post(self.hub.broadcast, json.dumps(status_message(self.store)))

    def _loop(self) -> None:
        while not self.stopping.is_set():
            record = self.store.take_next(timeout=0.5)
            if record is None:
                continue
            self.running_id = record.prompt_id
            try:
                self._run(record)
            except Exception:  # never let one prompt kill the worker
                log.exception("worker failed on prompt %s", record.prompt_id)
            finally:
                self.running_id = None
            self.broadcast_status()

    def _run(self, record) -> None:
        self.broadcast_status()
        messages, timings, started, final = list(record.messages), {}, {}, []  # keeps an earlier interruption
        client = record.client_id

        def on_event(event: Event) -> None:
            message = event_message(event, record.prompt_id)
            if event.type == "executing":
                started[message["data"]["node"]] = time.perf_counter()
            elif event.type == "executed" and message["data"]["node"] in started:
                node = message["data"]["node"]
                timings[node] = round(time.perf_counter() - started[node], 4)
            if event.type != "progress":
                messages.append([message["type"], message["data"]])
            if event.type in END_EVENTS:
                final.append(message)  # sent once the store has the outcome, so /history agrees with the socket
                return
            self._post(self.hub.send, client, json.dumps(message))
            if isinstance(event, Progress) and event.preview is not None:
                self._post(self.hub.send, client, preview_frame(event.preview))

        outcome: dict = {"status": "success"}
        try:
            result = self.executor.run(record.workflow, on_event=on_event, run_id=record.prompt_id)
            outcome["outputs"] = result.outputs
        except InvalidWorkflow as error:  # valid when queued, no longer (a file was removed since)
            issues = [issue.to_dict() for issue in error.issues]
            on_event_data = {"prompt_id": record.prompt_id, "node": issues[0].get("node_id"),
                             "node_type": issues[0].get("node_type"), "message": str(error), "node_errors": issues}
            final.append({"type": "execution_error", "data": on_event_data})
            messages.append(["execution_error", on_event_data])
            outcome = {"status": "error", "error": {"message": str(error), "node_errors": issues}}
        except NodeFailed as error:
            outcome = {"status": "error", "error": {"node_id": error.node_id, "node_type": error.node_type,
                                                    "message": error.message, "traceback": error.traceback}}
        except Interrupted:
            if self.stopping.is_set():
                return  # the server is shutting down: left running, recover() queues it again at the next start
            outcome = {"status": "interrupted"}
        self.store.finish(record.prompt_id, messages=messages, timings=timings, **outcome)
        for message in final:
            self._post(self.hub.send, client, json.dumps(message))
        if outcome["status"] == "success":
            self._post(self.hub.send, client, json.dumps({"type": "executing", "data": {
                "prompt_id": record.prompt_id, "node": None}}))
