"""The HTTP door's application: the Open Inference Protocol's REST binding (/v2), offshelf's JSON API (/v1, its
OpenAPI document at /openapi.json), OpenAI-style /v1/embeddings and the search page (/)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from offshelf.protos.v1 import embedding_pb2, heads_pb2, index_pb2
from offshelf.service.api.oip import InferenceServicer
from offshelf.service.http.door import Door
from offshelf.service.http.json_api import JsonRoutes
from offshelf.service.http.oip_rest import InferenceRoutes
from offshelf.service.http.openai_embeddings import EmbeddingsRoute
from offshelf.service.http.openapi import openapi_document
from offshelf.service.models.registry import ModelRegistry


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
    ]
    document = openapi_document(list(door.served), rpc_descriptors())

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(document)

    routes.append(door.route("/openapi.json", "GET", None, openapi))
    return Starlette(routes=routes, exception_handlers={404: refused, 405: refused})


def rpc_descriptors() -> dict[str, Any]:
    """Full RPC name (/offshelf.v1.Index/Search) -> its protobuf method descriptor."""
    return {
        f"/{service.full_name}/{method.name}": method
        for module in (embedding_pb2, index_pb2, heads_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
