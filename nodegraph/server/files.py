"""Images in and out: /view and /upload/image, each confined to its folder."""

import io
from pathlib import Path

from aiohttp import web
from PIL import Image

from nodegraph.nodes import Environment
from nodegraph.paths import UnsafePath, check_relative_name, confine
from nodegraph.server.security import ApiError
from nodegraph.server.state import state

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
routes = web.RouteTableDef()


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
