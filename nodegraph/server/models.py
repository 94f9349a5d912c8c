"""The model folders, as ComfyUI lists them: /models, /models/{folder}, /embeddings, /view_metadata/{folder}.

Everything comes from nodegraph.model_folders (symlinks inside the folders followed, extra_model_paths folders
included, user-given names confined); /view_metadata reads a safetensors file's JSON header only, never its tensors.
"""

from aiohttp import web

from nodegraph.model_folders import (UnknownModelFolder, embedding_names, list_models, model_kinds,
                                     safetensors_metadata)
from nodegraph.paths import UnsafePath
from nodegraph.server.security import ApiError
from nodegraph.server.state import state

routes = web.RouteTableDef()


@routes.get("/models")
async def model_folders(request: web.Request) -> web.Response:
    return web.json_response(model_kinds(state(request).config.env))


@routes.get("/models/{folder}")
async def model_files(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    try:
        return web.json_response(list_models(state(request).config.env, folder))
    except UnknownModelFolder as error:
        raise ApiError(404, "not_found", str(error)) from None


@routes.get("/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    """The embedding names a prompt can use (embedding:NAME): file names without their extension."""
    return web.json_response(embedding_names(state(request).config.env))


@routes.get("/view_metadata/{folder}")
async def view_metadata(request: web.Request) -> web.Response:
    """The "__metadata__" of a .safetensors file's header (training notes, trigger words, ...)."""
    folder, filename = request.match_info["folder"], request.query.get("filename", "")
    try:
        metadata = safetensors_metadata(state(request).config.env, folder, filename)
    except UnsafePath as error:
        raise ApiError(400, "unsafe_path", str(error)) from None
    except (UnknownModelFolder, FileNotFoundError) as error:
        raise ApiError(404, "not_found", str(error)) from None
    if metadata is None:
        raise ApiError(404, "not_found", f"{filename!r} has no metadata")
    return web.json_response(metadata)
