"""The OpenAPI 3.1 document of the HTTP door (/openapi.json), made from the routes the door serves: /v1's request
and answer schemas from the protobuf messages each route translates (their JSON mapping), the Open Inference
Protocol's (/v2) and the OpenAI-style route's described by hand. Every route the door serves is in it, and nothing
else, because both come from the same table."""

from __future__ import annotations

from importlib.metadata import version as package_version
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from offshelf.service.http.json_api import ROUTES

SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_INT64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_UINT64: {"type": "integer", "format": "int64", "minimum": 0},
}
ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what went wrong and how to fix it"},
        "code": {"type": "string", "description": "the gRPC status a gRPC caller would get"},
        "item": {"type": "integer", "description": "the request's item at fault, when one is"},
    },
    "required": ["error"],
}
OBJECT = {"type": "object"}
HAND_WRITTEN = {  # (method, path) -> (summary, request schema or None, answer schema)
    ("GET", "/v2"): ("Server metadata", None, OBJECT),
    ("GET", "/v2/health/live"): ("Liveness (open: no token)", None, OBJECT),
    ("GET", "/v2/health/ready"): ("Readiness (open: no token); 503 while loading or shutting down", None, OBJECT),
    ("GET", "/v2/models/stats"): ("Statistics of every model version", None, OBJECT),
    ("POST", "/v2/repository/index"): ("The repository's models and their states", OBJECT, {"type": "array"}),
    ("POST", "/v2/repository/models/{model}/load"): (
        "Load a model (parameters.config: a config override)",
        OBJECT,
        OBJECT,
    ),
    ("POST", "/v2/repository/models/{model}/unload"): ("Unload a model", OBJECT, OBJECT),
    ("POST", "/v1/embeddings"): ("OpenAI-style image embeddings", OBJECT, OBJECT),
    ("GET", "/openapi.json"): ("This document", None, OBJECT),
    ("GET", "/"): ("The search page (HTML)", None, OBJECT),
    ("GET", "/page.js"): ("The search page's script", None, OBJECT),
    ("GET", "/page.css"): ("The search page's style", None, OBJECT),
}
MODEL_ROUTES = {  # suffix under /v2/models/{model}[/versions/{version}]
    ("GET", ""): ("Model metadata", None, OBJECT),
    ("GET", "/ready"): ("Model readiness (503: not ready)", None, OBJECT),
    ("GET", "/config"): ("Model configuration (Triton's)", None, OBJECT),
    ("GET", "/stats"): ("Model statistics", None, OBJECT),
    ("POST", "/infer"): (
        "Inference: JSON tensors, or Triton's binary-data extension (Inference-Header-Content-Length)",
        OBJECT,
        OBJECT,
    ),
}


class Schemas:
    """JSON Schemas of protobuf messages in their JSON mapping, collected as components."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {"Error": ERROR}

    def message(self, descriptor: Any) -> dict[str, Any]:
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {}  # a placeholder: a message may refer to itself
            self.components[name] = {
                "type": "object",
                "properties": {field.name: self.field(field) for field in descriptor.fields},
                "additionalProperties": False,
            }
        return {"$ref": f"#/components/schemas/{name}"}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self.field(message.fields_by_name["value"])}
        if message is not None:
            single = self.message(message)
        elif field.enum_type is not None:
            single = {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        else:
            single = dict(SCALARS[field.type])
        return {"type": "array", "items": single} if field.is_repeated else single


def operation(rpc: str, summary: str, request: dict | None, answer: dict, multipart: bool = False) -> dict:
    made: dict[str, Any] = {
        "summary": summary,
        "x-offshelf-rpc": rpc,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": answer}}},
            "default": {"description": "a refusal", "content": {"application/json": {"schema": ERROR}}},
        },
    }
    if request is not None:
        content: dict[str, Any] = {"application/json": {"schema": request}}
        if multipart:
            content["multipart/form-data"] = {
                "schema": {
                    "type": "object",
                    "properties": {
                        "request": {"type": "string", "description": "the rest of the request, as JSON"},
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                }
            }
        made["requestBody"] = {"required": True, "content": content}
    return made


def parameters_of(path: str) -> list[dict]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


def openapi_document(served: list[tuple[str, str, str | None]], servicer_methods: dict[str, Any]) -> dict:
    """served: (method, path, rpc) of each route the door serves; servicer_methods: full RPC name -> the
    protobuf MethodDescriptor, for answer schemas."""
    schemas = Schemas()
    json_routes = {(r.method, r.path): r for r in ROUTES}
    paths: dict[str, dict[str, Any]] = {}
    for method, path, rpc in served:
        route = json_routes.get((method, path))
        if route is not None:
            answer = schemas.message(servicer_methods[route.rpc].output_type)
            request = None if method in ("GET", "DELETE") else schemas.message(route.request.DESCRIPTOR)
            made = operation(route.rpc, route.name, request, answer, bool(route.images))
        else:
            suffix = (
                path.split("/versions/{version}")[-1]
                if "/versions/" in path
                else path.removeprefix("/v2/models/{model}")
            )
            summary, request, answer = HAND_WRITTEN.get((method, path)) or MODEL_ROUTES[(method, suffix)]
            made = operation(rpc or "", summary, request, answer)
        made["parameters"] = parameters_of(path)
        if rpc is None:
            made["security"] = []  # open routes
        paths.setdefault(path, {})[method.lower()] = made
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "offshelf HTTP door",
            "version": package_version("offshelf"),
            "description": "offshelf's JSON API (/v1), the Open Inference Protocol's REST binding (/v2) and "
            "OpenAI-style embeddings. Bodies of /v1 routes are the offshelf.v1 request messages in protobuf's JSON "
            "mapping; routes that take images also take multipart/form-data (docs/api.md).",
        },
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
