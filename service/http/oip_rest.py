"""The Open Inference Protocol's REST binding (KServe v2, /v2/...), with Triton's binary-data extension, so that
stock Triton and KServe HTTP clients work unchanged.

A request is translated into the protocol's own message and answered by the same code as the gRPC binding
(api/oip.py), in process: one implementation of the protocol, so both bindings give the same answers, bit for bit,
and the same refusals. JSON tensor data is turned into raw contents; BYTES elements in JSON are strings (UTF-8) or
{"b64": "..."} objects (images). With the binary-data extension (header Inference-Header-Content-Length), the body is
the JSON header followed by the inputs that declare a binary_data_size, in order; outputs asked for as binary_data
(or all, with the request parameter binary_data_output) follow the response's JSON header the same way."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from offshelf.protos.inference import grpc_predict_v2_pb2 as pb2
from offshelf.service.api.oip import InferenceServicer, deserialize_bytes, serialize_bytes
from offshelf.service.errors import InvalidArgument
from offshelf.service.http.door import Door

SERVICE = "/inference.GRPCInferenceService/"
HEADER_LENGTH = "inference-header-content-length"
P = TypeVar("P", pb2.InferParameter, pb2.ModelRepositoryParameter)
DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype(np.uint8)}


def parameter(value: Any, name: str, message: type[P]) -> P:
    """A JSON parameter as the protocol's message: InferParameter, or the repository extension's
    ModelRepositoryParameter (which has no doubles)."""
    kind = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}.get(type(value))
    if kind is None or kind not in message.DESCRIPTOR.fields_by_name:
        kinds = "boolean, integer or string" if "double_param" not in message.DESCRIPTOR.fields_by_name else "number"
        raise InvalidArgument(f"parameter {name!r} is {type(value).__name__}: give a {kinds}")
    return message(**{kind: value})


def parameter_value(value: pb2.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def json_object(data: bytes, what: str) -> dict:
    try:
        parsed = json.loads(data or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidArgument(f"{what} is not valid JSON ({err})") from err
    except RecursionError as err:
        raise InvalidArgument(f"{what} nests arrays or objects too deeply to read") from err
    if not isinstance(parsed, dict):
        raise InvalidArgument(f"{what} is a JSON {type(parsed).__name__}; send an object")
    return parsed


def json_contents(tensor: dict, name: str) -> bytes:
    """An input's JSON data as the raw contents of its datatype."""
    datatype, data = tensor.get("datatype"), tensor.get("data")
    if data is None:
        raise InvalidArgument(f"input {name!r} has neither data nor a binary_data_size parameter")
    if datatype == "BYTES":
        return serialize_bytes([element(item, name) for item in np.asarray(data, dtype=object).ravel()])
    if datatype not in DTYPES:
        raise InvalidArgument(f"input {name!r} has datatype {datatype!r}; send FP32, UINT8 or BYTES")
    try:
        values = np.asarray(data, dtype=np.float64).ravel()
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"input {name!r}: data holds values that are not numbers ({err})") from err
    if datatype == "UINT8" and values.size and (values.min() < 0 or values.max() > 255 or (values % 1).any()):
        raise InvalidArgument(f"input {name!r}: UINT8 data holds values outside the integers 0..255")
    return values.astype(DTYPES[datatype]).tobytes()


def element(item: Any, name: str) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, dict) and isinstance(item.get("b64"), str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except binascii.Error as err:
            raise InvalidArgument(f"input {name!r}: a b64 element is not valid base64 ({err})") from err
    raise InvalidArgument(f'input {name!r}: a BYTES element is a string or {{"b64": "<base64>"}}, not {item!r:.40}')


def infer_request(header: dict, binary: bytes, model: str, version: str) -> pb2.ModelInferRequest:
    request = pb2.ModelInferRequest(model_name=model, model_version=version, id=str(header.get("id", "")))
    for key, value in (header.get("parameters") or {}).items():
        if key != "binary_data_output":
            request.parameters[key].CopyFrom(parameter(value, key, pb2.InferParameter))
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise InvalidArgument('the request has no "inputs" list: send {"inputs": [{"name", "shape", "datatype", ...}]}')
    position = 0
    for tensor in inputs:
        name, shape = str(tensor.get("name", "")), tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidArgument(f"input {name!r}: shape is a list of non-negative integers, not {shape!r}")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or position + size > len(binary):
                raise InvalidArgument(
                    f"input {name!r}: binary_data_size {size!r} runs past the {len(binary)} bytes after the JSON "
                    "header (Inference-Header-Content-Length)"
                )
            raw, position = binary[position : position + size], position + size
        else:
            raw = json_contents(tensor, name)
        request.inputs.add(name=name, datatype=str(tensor.get("datatype", "")), shape=shape)
        request.raw_input_contents.append(raw)
    for output in header.get("outputs") or []:
        request.outputs.add(name=str(output.get("name", "")) if isinstance(output, dict) else str(output))
    return request


def binary_outputs(header: dict) -> tuple[bool, dict[str, bool]]:
    """(all outputs binary?, binary or not per output named) as the request asks."""
    everything = bool((header.get("parameters") or {}).get("binary_data_output", False))
    named = {
        str(o.get("name")): bool((o.get("parameters") or {}).get("binary_data", everything))
        for o in header.get("outputs") or []
        if isinstance(o, dict)
    }
    return everything, named


def infer_response(response: pb2.ModelInferResponse, header: dict) -> Response:
    everything, named = binary_outputs(header)
    outputs, blobs = [], []
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if named.get(output.name, everything):
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif output.datatype == "BYTES":
            entry["data"] = [item.decode(errors="replace") for item in deserialize_bytes(raw, output.name)]
        else:
            entry["data"] = np.frombuffer(raw, DTYPES[output.datatype]).tolist()
        outputs.append(entry)
    body = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        body["id"] = response.id
    text = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(
        text + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(text))},
    )


def metadata(response: pb2.ModelMetadataResponse) -> dict:
    def tensors(items: Any) -> list[dict]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": response.name,
        "versions": list(response.versions),
        "platform": response.platform,
        "inputs": tensors(response.inputs),
        "outputs": tensors(response.outputs),
        "parameters": {k: parameter_value(v) for k, v in response.parameters.items()},
    }


def message_json(message: Any) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class InferenceRoutes:
    """The /v2 routes over the protocol's implementation."""

    def __init__(self, door: Door, protocol: InferenceServicer):
        self.door = door
        self.protocol = protocol

    def routes(self) -> list[Route]:
        door, routes = self.door, []
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                door.route(prefix, "GET", SERVICE + "ModelMetadata", self.model_metadata),
                door.route(prefix + "/ready", "GET", SERVICE + "ModelReady", self.model_ready),
                door.route(prefix + "/config", "GET", SERVICE + "ModelConfig", self.model_config),
                door.route(prefix + "/stats", "GET", SERVICE + "ModelStatistics", self.statistics),
                door.route(prefix + "/infer", "POST", SERVICE + "ModelInfer", self.infer),
            ]
        return [
            door.route("/v2", "GET", SERVICE + "ServerMetadata", self.server_metadata),
            door.route("/v2/health/live", "GET", None, self.live),
            door.route("/v2/health/ready", "GET", None, self.ready),
            door.route("/v2/models/stats", "GET", SERVICE + "ModelStatistics", self.statistics),
            *routes,
            door.route("/v2/repository/index", "POST", SERVICE + "RepositoryIndex", self.repository_index),
            door.route("/v2/repository/models/{model}/load", "POST", SERVICE + "RepositoryModelLoad", self.load),
            door.route("/v2/repository/models/{model}/unload", "POST", SERVICE + "RepositoryModelUnload", self.unload),
        ]

    async def _call(self, method: Callable[[Any, Any], Any], request: Any) -> Any:
        return await self.door.run(method, request, None)

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.protocol.is_ready()
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        response = await self._call(self.protocol.ServerMetadata, pb2.ServerMetadataRequest())
        return JSONResponse(message_json(response))

    @staticmethod
    def _names(request: Request) -> tuple[str, str]:
        return request.path_params["model"], request.path_params.get("version", "")

    async def model_metadata(self, request: Request) -> Response:
        name, version = self._names(request)
        response = await self._call(self.protocol.ModelMetadata, pb2.ModelMetadataRequest(name=name, version=version))
        return JSONResponse(metadata(response))

    async def model_ready(self, request: Request) -> Response:
        name, version = self._names(request)
        response = await self._call(self.protocol.ModelReady, pb2.ModelReadyRequest(name=name, version=version))
        return JSONResponse({"name": name, "ready": response.ready}, 200 if response.ready else 503)

    async def model_config(self, request: Request) -> Response:
        name, version = self._names(request)
        response = await self._call(self.protocol.ModelConfig, pb2.ModelConfigRequest(name=name, version=version))
        return JSONResponse(message_json(response.config))

    async def statistics(self, request: Request) -> Response:
        name, version = request.path_params.get("model", ""), request.path_params.get("version", "")
        response = await self._call(
            self.protocol.ModelStatistics, pb2.ModelStatisticsRequest(name=name, version=version)
        )
        return JSONResponse(message_json(response))

    async def infer(self, request: Request) -> Response:
        name, version = self._names(request)
        body = await request.body()  # read whole, within the limit, by the door
        length = request.headers.get(HEADER_LENGTH)
        if length is not None and not (length.isdigit() and int(length) <= len(body)):
            raise InvalidArgument(f"Inference-Header-Content-Length {length!r} is not a length within the body")
        split = int(length) if length is not None else len(body)
        header = json_object(body[:split], "the inference request")
        message = infer_request(header, body[split:], name, version)
        return infer_response(await self._call(self.protocol.ModelInfer, message), header)

    async def repository_index(self, request: Request) -> Response:
        header = json_object(await request.body(), "the repository index request")
        message = pb2.RepositoryIndexRequest(ready=bool(header.get("ready", False)))
        response = await self._call(self.protocol.RepositoryIndex, message)
        return JSONResponse([message_json(m) for m in response.models])

    async def load(self, request: Request) -> Response:
        message = pb2.RepositoryModelLoadRequest(model_name=request.path_params["model"])
        await self._control(request, message)
        await self._call(self.protocol.RepositoryModelLoad, message)
        return JSONResponse({})

    async def unload(self, request: Request) -> Response:
        message = pb2.RepositoryModelUnloadRequest(model_name=request.path_params["model"])
        await self._control(request, message)
        await self._call(self.protocol.RepositoryModelUnload, message)
        return JSONResponse({})

    async def _control(
        self, request: Request, message: pb2.RepositoryModelLoadRequest | pb2.RepositoryModelUnloadRequest
    ) -> None:
        header = json_object(await request.body(), "the repository request")
        for key, value in (header.get("parameters") or {}).items():
            message.parameters[key].CopyFrom(parameter(value, key, pb2.ModelRepositoryParameter))
