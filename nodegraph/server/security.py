"""The one place that turns errors into JSON, and the checks every request passes: Host, token, Origin."""

import hmac
import ipaddress
import json
from urllib.parse import urlsplit

from aiohttp import web

from nodegraph.server.config import ServerConfig

TOKEN_COOKIE = "nodegraph_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class ApiError(Exception):
    """A refused request, answered in ComfyUI's error shape: {"error": {"type", "message", "details", "extra_info"}}.

    `node_errors` (ComfyUI's per-node validation errors) is added to the body when given, as /prompt answers.
    """

    def __init__(self, status: int, kind: str, message: str, details: str = "", extra_info: dict | None = None,
                 node_errors: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.details, self.extra_info, self.node_errors = details, extra_info or {}, node_errors

    def body(self) -> dict:
        body: dict = {"error": {"type": self.kind, "message": self.message, "details": self.details,
                                "extra_info": self.extra_info}}
        if self.node_errors is not None:
            body["node_errors"] = self.node_errors
        return body


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@web.middleware
async def json_errors(request: web.Request, handler):
    """The one place that turns errors into JSON: {"error": {"type", "message", "details", "extra_info"}}."""
    try:
        return await handler(request)
    except ApiError as error:
        return web.json_response(error.body(), status=error.status)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        kind = "too_large" if error.status == 413 else "http_error"
        refused = ApiError(error.status, kind, error.text or error.reason)
        return web.json_response(refused.body(), status=error.status,
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


async def read_json(request: web.Request, limit: int, empty_ok: bool = False) -> dict:
    """The request's body as a JSON object, refused above `limit` bytes; `empty_ok`: no body reads as {}."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"request body over {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise ApiError(413, "too_large", f"request body over {limit} bytes")
    if empty_ok and not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return data
