"""Images in and out as ComfyUI's clients exchange them: /view, /upload/image and /upload/mask.

Every name is confined to its folder (input, output or temp) by nodegraph.paths; only images are served or stored,
each checked to decode and to be within the pixel limit.
"""

import asyncio
import io
import json
from pathlib import Path

from aiohttp import web
from PIL import Image, PngImagePlugin

from nodegraph.nodes import Environment
from nodegraph.paths import UnsafePath, check_relative_name, confine
from nodegraph.server.security import ApiError
from nodegraph.server.state import state

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
FOLDER_TYPES = ("input", "temp", "output")
# Served images never run as a page of our origin, whatever they contain.
IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
                 "Cache-Control": "no-cache"}
routes = web.RouteTableDef()


def folder_for(env: Environment, kind: str) -> Path:
    folders = {"output": env.output_dir, "input": env.input_dir, "temp": env.temp_dir}
    if kind not in folders:
        raise ApiError(400, "invalid_request", f"type must be one of {', '.join(FOLDER_TYPES)}, got {kind!r}")
    return Path(folders[kind])


def annotated(filename: str, default_type: str) -> tuple[str, str]:
    """ComfyUI's annotated names: "photo.png [output]" names the folder type after the file name."""
    for kind in FOLDER_TYPES:
        if filename.endswith(f" [{kind}]"):
            return filename[: -len(kind) - 3], kind
    return filename, default_type


def confined_file(root: Path, subfolder: str, filename: str) -> Path:
    try:
        name = check_relative_name(filename)
        if len(name.parts) != 1:
            raise UnsafePath(f"{filename!r}: a file name, without folders (use subfolder)")
        relative = (check_relative_name(subfolder).as_posix() + "/" + filename) if subfolder else filename
        return confine(root, relative)
    except UnsafePath as error:
        raise ApiError(400, "unsafe_path", str(error)) from error


def image_file(env: Environment, reference: dict, default_type: str) -> Path:
    """The existing image a {filename, subfolder?, type?} reference names, confined to its folder."""
    filename, kind = annotated(str(reference.get("filename") or ""), str(reference.get("type") or default_type))
    path = confined_file(folder_for(env, kind), str(reference.get("subfolder") or ""), filename)
    if path.suffix.lower() not in IMAGE_TYPES:  # never serve HTML, SVG or script from our origin
        raise ApiError(415, "not_an_image", f"only {', '.join(IMAGE_TYPES)} files are served")
    if not path.is_file():
        raise ApiError(404, "not_found", f"no file {filename!r}")
    return path


# --- /view ------------------------------------------------------------------------------------------------------


@routes.get("/view")
async def view(request: web.Request) -> web.StreamResponse:
    """An image; `preview=webp;90` (or jpeg) re-encodes it, `channel` rgb | a | rgba picks channels, as ComfyUI."""
    query = request.query
    path = image_file(state(request).config.env, dict(query), "output")
    channel = query.get("channel")
    if channel not in (None, "rgb", "a", "rgba"):
        raise ApiError(400, "invalid_request", f"channel must be rgb, a or rgba, got {channel!r}")
    if "preview" not in query and channel in (None, "rgba"):
        return web.FileResponse(path, headers={"Content-Type": IMAGE_TYPES[path.suffix.lower()], **IMAGE_HEADERS})
    body, content_type = await asyncio.get_running_loop().run_in_executor(
        None, converted_image, path, query.get("preview"), channel)
    return web.Response(body=body, headers={"Content-Type": content_type, **IMAGE_HEADERS})


def converted_image(path: Path, preview: str | None, channel: str | None) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with Image.open(path) as image:
        if preview is not None:  # "webp;90": format;quality; a channel with alpha asked for means webp, as ComfyUI
            parts = preview.split(";")
            image_format = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in (channel or "") else "webp"
            quality = int(parts[-1]) if parts[-1].isdigit() else 90
            if image_format == "jpeg" or channel == "rgb":
                image = image.convert("RGB")
            image.save(buffer, format=image_format.upper(), quality=max(1, min(quality, 100)))
            return buffer.getvalue(), f"image/{image_format}"
        if channel == "rgb":
            image.convert("RGB").save(buffer, format="PNG")
        else:  # "a": the alpha channel, as ComfyUI shows it: black pixels carrying the image's alpha
            alpha = image.getchannel("A") if image.mode == "RGBA" else Image.new("L", image.size, 255)
            shown = Image.new("RGBA", image.size)
            shown.putalpha(alpha)
            shown.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


# --- uploads ----------------------------------------------------------------------------------------------------


async def read_upload(request: web.Request):
    """The multipart form of an upload, and the bytes of its "image" field within the upload limit."""
    limits = state(request).config.limits
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
    return form, upload, data


def text_field(form, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value if isinstance(value, str) else default


def store_upload(root: Path, subfolder: str, stem: str, suffix: str, data: bytes, overwrite: bool) -> Path:
    """Write `data` as stem+suffix in root/subfolder; an existing different file keeps its name and the upload
    becomes "stem (1)", "stem (2)", ...; the same bytes again reuse the file (as ComfyUI does)."""
    target = confined_file(root, subfolder, stem + suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        try:
            with open(target, "wb" if overwrite else "xb") as file:
                file.write(data)
            return target
        except FileExistsError:
            if target.read_bytes() == data:
                return target
            target = confined_file(root, subfolder, f"{stem} ({number}){suffix}")
            number += 1


def upload_answer(target: Path, subfolder: str, kind: str) -> web.Response:
    return web.json_response({"name": target.name, "subfolder": subfolder, "type": kind})


def upload_place(form, env: Environment) -> tuple[Path, str, str, bool]:
    kind = text_field(form, "type", "input") or "input"
    return folder_for(env, kind), kind, text_field(form, "subfolder"), text_field(form, "overwrite") in ("true", "1")


@routes.post("/upload/image")
async def upload_image(request: web.Request) -> web.Response:
    """Form fields: image (the file), overwrite, type (input | temp | output), subfolder."""
    server = state(request)
    form, upload, data = await read_upload(request)
    image_format = check_image(data, server.config.limits.max_upload_pixels)
    suffix = SUFFIXES.get(image_format)
    if suffix is None:
        raise ApiError(415, "not_an_image", f"{image_format} images are not accepted: use PNG, JPEG or WebP")
    root, kind, subfolder, overwrite = upload_place(form, server.config.env)
    stem = Path(Path(upload.filename or "upload").name).stem or "upload"  # the name only, whatever path it came with
    target = store_upload(root, subfolder, stem, suffix, data, overwrite)
    return upload_answer(target, subfolder, kind)


@routes.post("/upload/mask")
async def upload_mask(request: web.Request) -> web.Response:
    """ComfyUI's mask editor: image (a mask in its alpha channel) and original_ref ({filename, subfolder?, type?}
    of the image it masks). Stores the original with its alpha replaced by the mask's, its PNG text kept."""
    server = state(request)
    limits, env = server.config.limits, server.config.env
    form, upload, data = await read_upload(request)
    check_image(data, limits.max_upload_pixels)
    try:
        reference = json.loads(text_field(form, "original_ref"))
    except ValueError as error:
        raise ApiError(400, "invalid_request", f'"original_ref" must be JSON {{"filename", ...}}: {error}') from None
    if not isinstance(reference, dict):
        raise ApiError(400, "invalid_request", '"original_ref" must be a JSON object {"filename", "subfolder", "type"}')
    original = image_file(env, reference, "output")
    masked = await asyncio.get_running_loop().run_in_executor(None, apply_mask, original, data, limits.max_upload_pixels)
    root, kind, subfolder, overwrite = upload_place(form, env)
    stem = Path(Path(upload.filename or "mask").name).stem or "mask"
    target = store_upload(root, subfolder, stem, ".png", masked, overwrite)
    return upload_answer(target, subfolder, kind)


def apply_mask(original: Path, mask_data: bytes, max_pixels: int) -> bytes:
    with Image.open(original) as image:
        if image.width * image.height > max_pixels:
            raise ApiError(413, "too_large", f"{image.width}x{image.height} is over the limit of {max_pixels} pixels")
        text = dict(getattr(image, "text", {}) or {})
        result = image.convert("RGBA")
    with Image.open(io.BytesIO(mask_data)) as mask:
        if mask.size != result.size:
            raise ApiError(400, "invalid_request", f"the mask is {mask.width}x{mask.height}, the image it masks "
                           f"{result.width}x{result.height}: they must be the same size")
        result.putalpha(mask.convert("RGBA").getchannel("A"))
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


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
