"""The HTTP and websocket face of the executor: routes over one worker thread and the durable store.

Run with `python -m nodegraph serve`. The executor runs prompts one at a time in a worker thread, so the event loop
always answers; every event of a prompt goes to the websocket(s) of the client that queued it.
"""

import asyncio
import hmac
import io
import ipaddress
import json
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from PIL import Image

from nodegraph.executor import Event, Executor, Interrupted, NodeFailed, Progress
from nodegraph.nodes import Environment
from nodegraph.paths import UnsafePath, check_relative_name, confine
from nodegraph.store import Store
from nodegraph.workflow import InvalidWorkflow, WorkflowIssue

log = logging.getLogger("nodegraph.server")
WEB_DIR = Path(__file__).resolve().parent / "web"  # package data, so a non-editable install serves the editor too
WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"  # the examples of a source checkout, if any
# The editor's own page may load only from this origin: nothing is fetched from elsewhere, and no other site frames it.
EDITOR_CSP = ("default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; script-src 'self'; "
              "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
TOKEN_ENV = "NODEGRAPH_AUTH_TOKEN"
TOKEN_COOKIE = "nodegraph_token"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
PREVIEW_FRAME, JPEG_FORMAT = 1, 1  # binary websocket frames: 4-byte big-endian event type, 4-byte format, then bytes
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
END_EVENTS = {"execution_success", "execution_error", "execution_interrupted"}


@dataclass(frozen=True)
class Limits:
    """Upper bounds that keep one request from exhausting the machine."""

    max_width: int = 2048
    max_height: int = 2048
    max_batch_size: int = 8
    max_steps: int = 200
    max_body_bytes: int = 2 * 2**20
    max_upload_bytes: int = 25 * 2**20
    max_upload_pixels: int = 4096 * 4096

    def workflow_issues(self, workflow: dict) -> list[WorkflowIssue]:
        """Inputs of any node named width/height/batch_size/steps above their limit."""
        bounds = {"width": self.max_width, "height": self.max_height, "batch_size": self.max_batch_size,
                  "steps": self.max_steps}
        issues = []
        for node_id, node in workflow.get("nodes", {}).items():
            for name, limit in bounds.items():
                value = node.get("inputs", {}).get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
                    issues.append(WorkflowIssue("over_limit", f"{value} is over this server's limit of {limit}",
                                                node_id=node_id, node_type=node.get("type"), input=name))
        return issues


@dataclass
class ServerConfig:
    env: Environment
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8188
    auth_token: str | None = None
    limits: Limits = field(default_factory=Limits)
    workflows_dir: Path | None = WORKFLOWS_DIR  # example workflows offered by the editor (None or missing: none)


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, **details):
        super().__init__(message)
        self.status, self.kind, self.message, self.details = status, kind, message, details


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- websocket clients ------------------------------------------------------------------------------------------


class Hub:
    """Websocket connections by client id; each has its own send queue so its messages keep their order."""

    def __init__(self):
        self.clients: dict[str, set[asyncio.Queue]] = {}
        self.sockets: set[web.WebSocketResponse] = set()  # closed at shutdown, so a stop never waits on a browser tab

    async def close_all(self) -> None:
        for ws in list(self.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    def connect(self, client_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.clients.setdefault(client_id, set()).add(queue)
        return queue

    def disconnect(self, client_id: str, queue: asyncio.Queue) -> None:
        self.clients.get(client_id, set()).discard(queue)
        if not self.clients.get(client_id):
            self.clients.pop(client_id, None)

    def send(self, client_id: str | None, message: str | bytes) -> None:
        for queue in self.clients.get(client_id, ()) if client_id is not None else ():
            queue.put_nowait(message)

    def broadcast(self, message: str) -> None:
        for queues in self.clients.values():
            for queue in queues:
                queue.put_nowait(message)


def event_message(event: Event, prompt_id: str) -> dict:
    """An executor event as a websocket message: {"type", "data": {"prompt_id", "node", ...}}."""
    message = event.to_dict()
    data = message["data"]
    data.pop("run_id", None)
    data["prompt_id"] = prompt_id
    if "node_id" in data:
        data["node"] = data.pop("node_id")
    data.pop("traceback", None)  # kept in history, not pushed to the page
    return message


def preview_frame(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return PREVIEW_FRAME.to_bytes(4, "big") + JPEG_FORMAT.to_bytes(4, "big") + buffer.getvalue()


# --- the worker -------------------------------------------------------------------------------------------------


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


def status_message(store: Store) -> dict:
    return {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": store.pending_count()}}}}


# --- middlewares: errors as JSON, auth, origin --------------------------------------------------------------------


@web.middleware
async def json_errors(request: web.Request, handler):
    """The one place that turns errors into JSON: {"error": {"type", "message", ...}}."""
    try:
        return await handler(request)
    except ApiError as error:
        return web.json_response({"error": {"type": error.kind, "message": error.message, **error.details}},
                                 status=error.status)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        kind = "too_large" if error.status == 413 else "http_error"
        return web.json_response({"error": {"type": kind, "message": error.text or error.reason}}, status=error.status,
                                 headers={k: v for k, v in error.headers.items() if k.lower() == "allow"})


def security_middleware(config: ServerConfig):
    @web.middleware
    async def check(request: web.Request, handler):
        if is_loopback(config.host):
            host = urlsplit("//" + (request.host or "")).hostname or ""
            if not is_loopback(host):  # DNS rebinding: a foreign name resolving to 127.0.0.1
                raise ApiError(403, "bad_host", f"Host {request.host!r} is not a loopback name")
        if config.auth_token is not None:
            given = (request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                     or request.query.get("token") or request.cookies.get(TOKEN_COOKIE) or "")
            if not hmac.compare_digest(given.encode(), config.auth_token.encode()):
                raise ApiError(401, "unauthorized", "a valid auth token is required (Authorization: Bearer TOKEN)")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.method not in SAFE_METHODS or websocket:
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc.lower() != (request.host or "").lower():
                raise ApiError(403, "cross_origin", f"cross-origin request from {origin!r} refused")
            if request.headers.get("Sec-Fetch-Site") == "cross-site":
                raise ApiError(403, "cross_origin", "cross-site request refused")
        response = await handler(request)
        if config.auth_token is not None and request.query.get("token") and not request.cookies.get(TOKEN_COOKIE):
            # A page opened with ?token= keeps working for its later requests without repeating it.
            response.set_cookie(TOKEN_COOKIE, config.auth_token, httponly=True, samesite="Strict")
        return response

    return check


# --- routes -----------------------------------------------------------------------------------------------------

routes = web.RouteTableDef()


def state(request: web.Request) -> "ServerState":
    return request.app[STATE]


async def read_json(request: web.Request) -> dict:
    limit = state(request).config.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"request body over {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise ApiError(413, "too_large", f"request body over {limit} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return data


def workflow_issues(server: "ServerState", workflow) -> list[WorkflowIssue]:
    """Everything that keeps `workflow` from being queued: validation and this server's limits."""
    issues = []
    try:
        server.executor.validate(workflow)
    except InvalidWorkflow as error:
        issues = list(error.issues)
    if isinstance(workflow, dict):
        issues += server.config.limits.workflow_issues(workflow)
    return issues


@routes.post("/prompt")
async def queue_prompt(request: web.Request) -> web.Response:
    body = await read_json(request)
    workflow = body.get("workflow", body.get("prompt"))
    server = state(request)
    issues = workflow_issues(server, workflow)
    if issues:
        raise ApiError(400, "invalid_workflow", "\n".join(str(issue) for issue in issues),
                       node_errors=[issue.to_dict() for issue in issues])
    client_id = body.get("client_id")
    record = server.store.enqueue(workflow, client_id if isinstance(client_id, str) else None)
    server.hub.broadcast(json.dumps(status_message(server.store)))
    return web.json_response({"prompt_id": record.prompt_id, "number": record.number, "node_errors": {}})


@routes.post("/validate")
async def validate_workflow(request: web.Request) -> web.Response:
    """The checks of /prompt without queueing: {"valid", "node_errors"}, always 200 for a readable request.

    The editor asks here before queueing, so an invalid workflow is a result to show on its nodes, not a failed
    request (which browsers log as an error).
    """
    body = await read_json(request)
    issues = workflow_issues(state(request), body.get("workflow", body.get("prompt")))
    return web.json_response({"valid": not issues, "node_errors": [issue.to_dict() for issue in issues]})


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    running, pending = state(request).store.queue()
    return web.json_response({"queue_running": [r.summary() for r in running],
                              "queue_pending": [r.summary() for r in pending]})


@routes.post("/queue")
async def edit_queue(request: web.Request) -> web.Response:
    """{"delete": [prompt_id, ...]} or {"clear": true}: cancel pending prompts (the running one: /interrupt)."""
    body = await read_json(request)
    store = state(request).store
    ids = body.get("delete", [])
    if body.get("clear"):
        ids = [r.prompt_id for r in store.queue()[1]]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "invalid_request", '"delete" must be a list of prompt ids')
    cancelled = store.cancel(ids)
    state(request).hub.broadcast(json.dumps(status_message(store)))
    return web.json_response({"cancelled": cancelled})


@routes.post("/interrupt")
async def interrupt(request: web.Request) -> web.Response:
    server = state(request)
    running = server.worker.running_id
    if running is not None:
        server.executor.interrupt()
    return web.json_response({"interrupted": running})


@routes.get("/history")
async def history(request: web.Request) -> web.Response:
    try:
        limit = max(1, min(int(request.query.get("max_items", 100)), 10000))
    except ValueError as error:
        raise ApiError(400, "invalid_request", "max_items must be an integer") from error
    records = state(request).store.history(limit)
    return web.json_response({r.prompt_id: r.history_entry() for r in records})


@routes.get("/history/{prompt_id}")
async def history_one(request: web.Request) -> web.Response:
    record = state(request).store.get(request.match_info["prompt_id"])
    if record is None:
        raise ApiError(404, "not_found", f"no prompt {request.match_info['prompt_id']!r}")
    return web.json_response({record.prompt_id: record.history_entry()})


def folder_for(env: Environment, kind: str) -> Path:
    folders = {"output": env.output_dir, "input": env.input_dir, "temp": env.temp_dir}
    if kind not in folders:
        raise ApiError(400, "invalid_request", f"type must be one of {', '.join(folders)}, got {kind!r}")
    return Path(folders[kind])


def confined_file(root: Path, subfolder: str, filename: str) -> Path:
    try:
        name = check_relative_name(filename)
        if len(name.parts) != 1:
            raise UnsafePath(f"{filename!r}: a file name, without folders (use subfolder)")
        relative = (check_relative_name(subfolder).as_posix() + "/" + filename) if subfolder else filename
        return confine(root, relative)
    except UnsafePath as error:
        raise ApiError(400, "unsafe_path", str(error)) from error


@routes.get("/view")
async def view(request: web.Request) -> web.StreamResponse:
    server = state(request)
    query = request.query
    root = folder_for(server.config.env, query.get("type", "output"))
    path = confined_file(root, query.get("subfolder", ""), query.get("filename", ""))
    content_type = IMAGE_TYPES.get(path.suffix.lower())
    if content_type is None:  # never serve HTML, SVG or script from our origin
        raise ApiError(415, "not_an_image", f"only {', '.join(IMAGE_TYPES)} files are served")
    if not path.is_file():
        raise ApiError(404, "not_found", f"no file {query.get('filename')!r}")
    return web.FileResponse(path, headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff",
                                           "Content-Security-Policy": "default-src 'none'; sandbox",
                                           "Cache-Control": "no-cache"})


@routes.post("/upload/image")
async def upload_image(request: web.Request) -> web.Response:
    server = state(request)
    limits = server.config.limits
    try:
        form = await request.post()
    except ValueError as error:
        raise ApiError(400, "invalid_request", f"expected a multipart form: {error}") from error
    upload = form.get("image")
    if not isinstance(upload, web.FileField):
        raise ApiError(400, "invalid_request", 'expected a multipart form with an "image" file field')
    data = upload.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise ApiError(413, "too_large", f"uploads are limited to {limits.max_upload_bytes} bytes")
    image_format = check_image(data, limits.max_upload_pixels)
    suffix = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}.get(image_format)
    if suffix is None:
        raise ApiError(415, "not_an_image", f"{image_format} images are not accepted: use PNG, JPEG or WebP")
    root = Path(server.config.env.input_dir)
    subfolder = form.get("subfolder", "") if isinstance(form.get("subfolder", ""), str) else ""
    stem = Path(Path(upload.filename or "upload").name).stem or "upload"
    target = confined_file(root, subfolder, stem + suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    overwrite = form.get("overwrite") in ("true", "1")
    number = 1
    while True:
        try:
            with open(target, "wb" if overwrite else "xb") as file:
                file.write(data)
            break
        except FileExistsError:
            if target.read_bytes() == data:  # the same picture again: reuse it
                break
            target = confined_file(root, subfolder, f"{stem} ({number}){suffix}")
            number += 1
    name = target.relative_to(root.resolve()).as_posix()
    return web.json_response({"name": name, "subfolder": subfolder, "type": "input"})


def check_image(data: bytes, max_pixels: int) -> str:
    """The format of an image that decodes and is not too large; ApiError otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise ApiError(413, "too_large", f"{image.width}x{image.height} is over the limit of {max_pixels} pixels")
            image.load()
            return image.format
    except ApiError:
        raise
    except Exception as error:
        raise ApiError(415, "not_an_image", f"the upload does not decode as an image: {error}") from error


@routes.get("/object_info")
async def object_info(request: web.Request) -> web.Response:
    server = state(request)
    return web.json_response(server.executor.registry.describe(server.config.env))


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    import torch

    from nodegraph.device import pick_device, pick_dtype

    env = state(request).config.env
    device = pick_device(env.device)
    stats = {
        "system": {"os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                   "nodegraph": package_version(), "ram_total": ram_bytes("MemTotal"), "ram_free": ram_bytes("MemAvailable")},
        "device": {"type": device.type, "name": str(device), "dtype": str(pick_dtype(device, env.dtype)).removeprefix("torch.")},
    }
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        stats["device"].update(name=torch.cuda.get_device_name(device), vram_total=total, vram_free=free)
    return web.json_response(stats)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nodegraph")
    except PackageNotFoundError:
        return "unknown"


def ram_bytes(field_name: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@routes.get("/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    server = state(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    client_id = request.query.get("client_id") or os.urandom(8).hex()
    queue = server.hub.connect(client_id)
    greeting = status_message(server.store)
    greeting["data"]["sid"] = client_id
    queue.put_nowait(json.dumps(greeting))

    async def send_all() -> None:
        while True:
            message = await queue.get()
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)

    sender = asyncio.create_task(send_all())
    server.hub.sockets.add(ws)
    try:
        async for message in ws:  # the page sends nothing we act on; reading keeps the connection serviced
            if message.type == WSMsgType.ERROR:
                break
    finally:
        sender.cancel()
        server.hub.sockets.discard(ws)
        server.hub.disconnect(client_id, queue)
    return ws


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    page = WEB_DIR / "index.html"
    if not page.is_file():
        return web.Response(text="nodegraph server: the web editor is not installed", content_type="text/plain")
    return web.FileResponse(page, headers={"Content-Security-Policy": EDITOR_CSP, "Cache-Control": "no-cache"})


def example_workflow_names(folder: Path | None) -> list[str]:
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(path.name for path in Path(folder).glob("*.json") if not path.name.startswith(".")
                  and path.is_file() and not path.is_symlink())


@routes.get("/workflows")
async def list_workflows(request: web.Request) -> web.Response:
    """The example workflows (names of the JSON files in the examples folder), read-only."""
    return web.json_response({"workflows": example_workflow_names(state(request).config.workflows_dir)})


@routes.get("/workflows/{name}")
async def get_workflow(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    # Only names the listing offers: no path syntax, no symlink, nothing but the folder's own .json files.
    if name not in example_workflow_names(state(request).config.workflows_dir):
        raise ApiError(404, "not_found", f"no example workflow {name!r}")
    path = Path(state(request).config.workflows_dir) / name
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ApiError(500, "unreadable", f"example workflow {name!r} is unreadable: {error}") from error
    return web.json_response(workflow)


# --- the application ----------------------------------------------------------------------------------------------

STATE = web.AppKey("state", object)


@dataclass
class ServerState:
    config: ServerConfig
    executor: Executor
    store: Store
    hub: Hub
    worker: Worker | None = None


def create_app(config: ServerConfig) -> web.Application:
    if not is_loopback(config.host) and not config.auth_token:
        raise ValueError(f"binding {config.host} exposes the server to the network: set an auth token "
                         f"(--auth-token or {TOKEN_ENV})")
    limits = config.limits
    app = web.Application(middlewares=[json_errors, security_middleware(config)],
                          client_max_size=max(limits.max_upload_bytes, limits.max_body_bytes) + 64 * 1024)
    app.add_routes(routes)
    if WEB_DIR.is_dir():
        # follow_symlinks=False: a symlink in the folder never leads out of it; no directory listings either.
        app.router.add_static("/web/", WEB_DIR, follow_symlinks=False, show_index=False)
        app.on_response_prepare.append(revalidate_editor_files)
    store = Store(Path(config.data_dir) / "nodegraph.sqlite3")
    app[STATE] = server = ServerState(config=config, executor=Executor(config.env), store=store, hub=Hub())

    async def start_worker(app: web.Application) -> None:
        recovered = store.recover()
        if recovered:
            log.warning("re-queued %d prompt(s) interrupted by the last shutdown", len(recovered))
        server.worker = Worker(server.executor, store, server.hub, asyncio.get_running_loop())
        server.worker.start()

    async def stop_worker(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, server.worker.stop)
        store.close()

    async def close_sockets(app: web.Application) -> None:
        await server.hub.close_all()

    app.on_startup.append(start_worker)
    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(stop_worker)
    return app


async def revalidate_editor_files(request: web.Request, response: web.StreamResponse) -> None:
    """The editor's modules are asked for again on each load, so an upgraded server never runs stale JavaScript."""
    if request.path.startswith("/web/"):
        response.headers["Cache-Control"] = "no-cache"


def serve(config: ServerConfig) -> None:
    app = create_app(config)
    print(f"nodegraph: serving http://{'[' + config.host + ']' if ':' in config.host else config.host}:{config.port}/",
          flush=True)
    web.run_app(app, host=config.host, port=config.port, print=None)
