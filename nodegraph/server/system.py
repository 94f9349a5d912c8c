"""What the server knows and runs on: /object_info, /system_stats."""

from pathlib import Path
import platform

from aiohttp import web

from nodegraph.server.state import state

routes = web.RouteTableDef()


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
