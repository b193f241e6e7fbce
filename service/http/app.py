"""The HTTP door's application: the Open Inference Protocol's REST binding (/v2), offshelf's JSON API (/v1, its
OpenAPI document at /openapi.json), OpenAI-style /v1/embeddings and the search page (/)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from offshelf.protos.v1 import embedding_pb2, heads_pb2, index_pb2
from offshelf.service.api.oip import InferenceServicer
from offshelf.service.http.door import Door
from offshelf.service.http.json_api import JsonRoutes
from offshelf.service.http.oip_rest import InferenceRoutes
from offshelf.service.http.openai_embeddings import EmbeddingsRoute
from offshelf.service.http.openapi import openapi_document
from offshelf.service.models.registry import ModelRegistry

PAGE = {
    "/": ("index.html", "text/html"),
    "/page.js": ("page.js", "text/javascript"),
    "/page.css": ("page.css", "text/css"),
}
# the page runs only its own script and talks only to this server; photos are shown from local blob: URLs
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'"


async def refused(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such route, a method the route does not take) as the door's JSON errors."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    messages = {
        404: f"no route {request.url.path}: the routes are listed at /openapi.json (and /v2/... for the Open "
        "Inference Protocol)",
        405: f"{request.url.path} does not take {request.method}; /openapi.json lists what it takes",
    }
    code = {404: "NOT_FOUND", 405: "INVALID_ARGUMENT"}.get(status, "INTERNAL")
    message = messages.get(status, "the call failed on an unexpected server error; see its log")
    return JSONResponse({"error": message, "code": code}, status)


def http_app(
    door: Door, protocol: InferenceServicer, servicers: dict[str, Any], models: ModelRegistry, max_images: int
) -> Starlette:
    routes = [
        *InferenceRoutes(door, protocol).routes(),
        *EmbeddingsRoute(door, models, max_images).routes(),
        *JsonRoutes(door, servicers).routes(),
        *page_routes(door),
    ]
    document: dict[str, Any] = {}

    async def openapi(request: Request) -> JSONResponse:
        if not document:  # made at the first call: every route exists by then
            document.update(openapi_document(list(door.served), rpc_descriptors()))
        return JSONResponse(document)

    routes.append(door.route("/openapi.json", "GET", None, openapi))
    return Starlette(routes=routes, exception_handlers={404: refused, 405: refused})


def page_routes(door: Door) -> list[Route]:
    """The search page's files, from the package: open routes (the calls the page makes carry the token)."""
    folder = resources.files("offshelf.service.http") / "page"
    routes = []
    for path, (name, media_type) in PAGE.items():
        content = (folder / name).read_bytes()

        async def page_file(request: Request, content: bytes = content, media_type: str = media_type) -> Response:
            return Response(content, media_type=media_type, headers={"content-security-policy": PAGE_POLICY})

        routes.append(door.route(path, "GET", None, page_file))
    return routes


def rpc_descriptors() -> dict[str, Any]:
    """Full RPC name (/offshelf.v1.Index/Search) -> its protobuf method descriptor."""
    return {
        f"/{service.full_name}/{method.name}": method
        for module in (embedding_pb2, index_pb2, heads_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
