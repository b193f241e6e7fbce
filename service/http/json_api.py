"""offshelf's own API as JSON (/v1/...): each route stands for one RPC of offshelf.v1 and is answered by the same
servicer, in process, so that validation, statuses and answers are the gRPC port's.

Bodies are the request message in protobuf's JSON mapping (field names as in the .proto or in lowerCamelCase;
bytes as base64); path parameters fill the field they name, and GET query parameters the others (message fields as
JSON). Calls that take images also take a multipart/form-data body: every file part is an image (Embed, Classify:
the images; Search: the query; Add: one item each, whose id defaults to the file's name), and an optional ``request``
part holds the rest of the message as JSON. Answers are the response message in the JSON mapping (field names as
in the .proto, every field present, 64-bit integers as numbers)."""

from __future__ import annotations

import base64
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from offshelf.protos.v1 import embedding_pb2, heads_pb2, index_pb2
from offshelf.service.errors import InvalidArgument
from offshelf.service.http.door import Door
from offshelf.service.http.oip_rest import json_object

MAX_PARTS = 1000  # files and fields of one multipart body
BOOLEANS = {"true": True, "false": False, "1": True, "0": False}  # in query parameters


@dataclass(frozen=True)
class JsonRoute:
    method: str
    path: str
    rpc: str  # the full gRPC method: its role, its servicer method
    request: type[Message]
    path_fields: dict[str, str] = field(default_factory=dict)  # path parameter -> request field
    images: str = ""  # the field that multipart file parts fill: "images", "image" or "items"

    @property
    def name(self) -> str:
        return self.rpc.rsplit("/", 1)[-1]


EMBEDDING, INDEX, HEADS = "/offshelf.v1.Embedding/", "/offshelf.v1.Index/", "/offshelf.v1.Heads/"
COLLECTION = {"name": "collection"}
ROUTES = [
    JsonRoute("GET", "/v1/models", EMBEDDING + "ListModels", embedding_pb2.ListModelsRequest),
    JsonRoute(
        "POST",
        "/v1/models/{model}/embed",
        EMBEDDING + "Embed",
        embedding_pb2.EmbedRequest,
        {"model": "model"},
        "images",
    ),
    JsonRoute("GET", "/v1/collections", INDEX + "ListCollections", index_pb2.ListCollectionsRequest),
    JsonRoute("POST", "/v1/collections", INDEX + "CreateCollection", index_pb2.CreateCollectionRequest),
    JsonRoute(
        "GET", "/v1/collections/{name}", INDEX + "GetCollection", index_pb2.GetCollectionRequest, {"name": "name"}
    ),
    JsonRoute(
        "DELETE",
        "/v1/collections/{name}",
        INDEX + "DeleteCollection",
        index_pb2.DeleteCollectionRequest,
        {"name": "name"},
    ),
    JsonRoute("POST", "/v1/collections/{name}/items", INDEX + "Add", index_pb2.AddRequest, COLLECTION, "items"),
    JsonRoute("GET", "/v1/collections/{name}/items", INDEX + "ListItems", index_pb2.ListItemsRequest, COLLECTION),
    JsonRoute("POST", "/v1/collections/{name}/items/get", INDEX + "GetItems", index_pb2.GetItemsRequest, COLLECTION),
    JsonRoute("POST", "/v1/collections/{name}/items/remove", INDEX + "Remove", index_pb2.RemoveRequest, COLLECTION),
    JsonRoute("POST", "/v1/collections/{name}/search", INDEX + "Search", index_pb2.SearchRequest, COLLECTION, "image"),
    JsonRoute(
        "POST", "/v1/collections/{name}/search/batch", INDEX + "SearchBatch", index_pb2.SearchBatchRequest, COLLECTION
    ),
    JsonRoute(
        "POST",
        "/v1/collections/{name}/whitening",
        INDEX + "TrainWhitening",
        index_pb2.TrainWhiteningRequest,
        COLLECTION,
    ),
    JsonRoute(
        "POST",
        "/v1/collections/{name}/augmentation",
        INDEX + "AugmentDatabase",
        index_pb2.AugmentDatabaseRequest,
        COLLECTION,
    ),
    JsonRoute("GET", "/v1/heads", HEADS + "ListHeads", heads_pb2.ListHeadsRequest),
    JsonRoute("POST", "/v1/heads", HEADS + "TrainHead", heads_pb2.TrainHeadRequest),
    JsonRoute("GET", "/v1/heads/{name}", HEADS + "GetHead", heads_pb2.GetHeadRequest, {"name": "name"}),
    JsonRoute("DELETE", "/v1/heads/{name}", HEADS + "DeleteHead", heads_pb2.DeleteHeadRequest, {"name": "name"}),
    JsonRoute(
        "POST", "/v1/heads/{name}/classify", HEADS + "Classify", heads_pb2.ClassifyRequest, {"name": "head"}, "images"
    ),
]


def answer_json(message: Message) -> dict:
    """A message in protobuf's JSON mapping (field names as in the .proto, every field present, 64-bit integers as
    numbers, enums by name, bytes as base64). Written here because json_format's takes ~5 ms for one 1280-d vector:
    repeated numbers are copied as they are (a float32 as the double that holds it exactly)."""
    answer: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.has_presence and not fd.is_repeated and not message.HasField(fd.name):
            continue  # a message field, a oneof's other member or an optional scalar that is not set
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            entry = fd.message_type.fields_by_name["value"]
            answer[fd.name] = {k: json_value(entry, v) for k, v in value.items()}
        elif fd.is_repeated:
            simple = fd.message_type is None and fd.enum_type is None and fd.type != fd.TYPE_BYTES
            answer[fd.name] = list(value) if simple else [json_value(fd, v) for v in value]
        else:
            answer[fd.name] = json_value(fd, value)
    return answer


def json_value(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        return answer_json(value)
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    if field.type == field.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def parsed(fields: dict, message_type: type[Message]) -> Message:
    try:
        return json_format.ParseDict(fields, message_type())
    except json_format.ParseError as err:
        raise InvalidArgument(f"the request does not fit {message_type.DESCRIPTOR.name}: {err}") from err


def query_fields(request: Request, message_type: type[Message]) -> dict:
    """GET query parameters as message fields: repeated ones as lists, message fields parsed as JSON."""
    fields: dict[str, Any] = {}
    descriptor = message_type.DESCRIPTOR
    for key in request.query_params:
        described = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if described is None:
            raise InvalidArgument(f"query parameter {key!r} is not a field of {descriptor.name}")
        values = request.query_params.getlist(key)
        if described.message_type is not None:
            fields[key] = json_object(values[-1].encode(), f"query parameter {key}")
        elif described.type == described.TYPE_BOOL and values[-1] in BOOLEANS:
            fields[key] = BOOLEANS[values[-1]]  # ?with_vectors=true
        else:
            fields[key] = values if described.is_repeated else values[-1]
    return fields


async def multipart_fields(request: Request, route: JsonRoute) -> tuple[dict, list[bytes]]:
    """A multipart body as (message fields of its ``request`` part, the contents of its files): for Add, an item
    per file (the request part's items in file order, or an item per file whose id is the file's name)."""
    if not route.images:
        raise InvalidArgument(f"{route.name} takes no images: send its request as JSON")
    try:
        form = await request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS)
    except (MultiPartException, HTTPException) as err:  # HTTPException: Starlette's wrapping of the same
        detail = err.message if isinstance(err, MultiPartException) else err.detail
        raise InvalidArgument(f"the multipart body cannot be read ({detail}); send multipart/form-data") from err
    text = form.get("request")
    fields = json_object(text.encode(), "the request part") if isinstance(text, str) else {}
    files = [part for _, part in form.multi_items() if isinstance(part, UploadFile)]
    if not files:
        raise InvalidArgument("the multipart body holds no file part: attach each image as a file")
    if route.images == "image" and len(files) != 1:
        raise InvalidArgument(f"{route.name} takes one query image; the body holds {len(files)} files")
    if route.images == "items":
        described = fields.get("items")
        if described is None:
            described = [{"id": pathlib.PurePath(part.filename or "").name} for part in files]
        if not isinstance(described, list) or len(described) != len(files):
            count = len(described) if isinstance(described, list) else "no"
            raise InvalidArgument(
                f"the request part's items describe {count} items; the body holds {len(files)} files: describe "
                "each file once, in order, or leave items out"
            )
        fields["items"] = described
    return fields, [await part.read() for part in files]


def attach(message: Message, route: JsonRoute, images: list[bytes]) -> None:
    """Uploaded images into the message's image field."""
    if route.images == "image":
        message.image = images[0]  # type: ignore[attr-defined]
    elif route.images == "images":
        message.images.extend(images)  # type: ignore[attr-defined]
    else:
        for item, image in zip(message.items, images, strict=True):  # type: ignore[attr-defined]
            if item.WhichOneof("content") is not None:
                raise InvalidArgument(f"item {item.id!r} has an uploaded file and content of its own: give one")
            item.image = image


class JsonRoutes:
    """The /v1 routes over the servicers, looked up by the RPC's name."""

    def __init__(self, door: Door, servicers: dict[str, Any]):
        self.door = door
        self.servicers = servicers  # service prefix (e.g. "/offshelf.v1.Index/") -> servicer

    def routes(self) -> list[Route]:
        return [self.door.route(r.path, r.method, r.rpc, self._endpoint(r)) for r in ROUTES]

    def _endpoint(self, route: JsonRoute) -> Callable[[Request], Any]:
        service = route.rpc[: route.rpc.rindex("/") + 1]
        method = getattr(self.servicers[service], route.name)

        async def endpoint(request: Request) -> Response:
            fields, images = await self._fields(request, route)
            for parameter, name in route.path_fields.items():
                given, value = fields.get(name), request.path_params[parameter]
                if given not in (None, "", value):
                    raise InvalidArgument(f"the body says {name} {given!r} but the path says {value!r}")
                fields[name] = value
            message = parsed(fields, route.request)
            if images:
                attach(message, route, images)
            return JSONResponse(answer_json(await self.door.run(method, message, None)))

        return endpoint

    async def _fields(self, request: Request, route: JsonRoute) -> tuple[dict, list[bytes]]:
        if request.method in ("GET", "DELETE"):
            return query_fields(request, route.request), []
        body = await request.body()  # read whole, within the limit, by the door
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await multipart_fields(request, route)
        return json_object(body, "the request body"), []
