"""What the server knows and runs on, in ComfyUI's shapes: /object_info[/{class}], /system_stats, /features."""

import sys
from pathlib import Path

from aiohttp import web

from nodegraph.server.comfy_shapes import NAMESPACES, find_node, node_info, object_info
from nodegraph.server.security import ApiError
from nodegraph.server.state import state

routes = web.RouteTableDef()


def namespace_of(request: web.Request) -> str:
    """?namespace=native keys the node types by our native TYPE (the editor's), else by ComfyUI's class_type."""
    namespace = request.query.get("namespace", "comfy")
    if namespace not in NAMESPACES:
        raise ApiError(400, "invalid_request", f"namespace must be one of {', '.join(NAMESPACES)}, got {namespace!r}")
    return namespace


@routes.get("/object_info")
async def all_object_info(request: web.Request) -> web.Response:
    server = state(request)
    return web.json_response(object_info(server.executor.registry, server.config.env, namespace_of(request)))


@routes.get("/object_info/{node_class}")
async def one_object_info(request: web.Request) -> web.Response:
    """{class: entry}, or {} for a class this server does not have (as ComfyUI answers)."""
    server = state(request)
    namespace, name = namespace_of(request), request.match_info["node_class"]
    node = find_node(server.executor.registry, name, namespace)
    return web.json_response({name: node_info(node, server.config.env, namespace)} if node else {})


@routes.get("/features")
async def features(request: web.Request) -> web.Response:
    """ComfyUI's server feature flags: no preview metadata frames; the upload limit in bytes."""
    return web.json_response(server_features(state(request).config.limits.max_upload_bytes))


def server_features(max_upload_bytes: int) -> dict:
    return {"supports_preview_metadata": False, "max_upload_size": max_upload_bytes}


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    import torch

    from nodegraph.device import pick_device

    device = pick_device(state(request).config.env.device)
    ram_total, ram_free = ram_bytes("MemTotal"), ram_bytes("MemAvailable")
    entry = {"name": str(device), "type": device.type, "index": device.index, "vram_total": ram_total,
             "vram_free": ram_free, "torch_vram_total": ram_total, "torch_vram_free": ram_free}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device)
        unused = reserved - torch.cuda.memory_allocated(device)
        entry.update(name=f"{device} {torch.cuda.get_device_name(device)}", index=device.index or 0, vram_total=total,
                     vram_free=free + unused, torch_vram_total=reserved, torch_vram_free=unused)
    return web.json_response({
        "system": {"os": sys.platform, "ram_total": ram_total, "ram_free": ram_free,
                   "comfyui_version": package_version(), "python_version": sys.version,
                   "pytorch_version": torch.__version__, "embedded_python": False, "argv": sys.argv},
        "devices": [entry],
    })


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nodegraph")
    except PackageNotFoundError:
        return "unknown"


def ram_bytes(field_name: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
