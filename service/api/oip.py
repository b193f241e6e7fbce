"""The Open Inference Protocol (KServe v2) servicer, so stock Triton and KServe clients work unchanged.

A request has one input: ``image`` as FP32 (N, 3, H, W), already preprocessed as the model card says; ``encoded``
as BYTES (N) of encoded images, which are decoded and preprocessed here (``image`` as BYTES too, as before); or
``pixels`` as UINT8 (N, H, W, 3), the decoded RGB crops (a quarter of FP32's bytes; the graph normalises them).
Outputs are the model's outputs (FP32, N x dim) and, for each head trained on this model version,
``<head>/probabilities`` (FP32, N x classes, in the head's label order) and ``<head>/labels`` (BYTES, N x top_k,
best first). Requests go through the same batcher as Embed.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import version as package_version

import grpc
import numpy as np

from offshelf.protos.inference import grpc_predict_v2_pb2 as pb2
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as pb2_grpc
from offshelf.service.api.checks import check_image_count
from offshelf.service.api.oip_config import ENCODED, PLATFORM, config_override, inputs, model_config
from offshelf.service.api.statuses import status_of
from offshelf.service.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError, Unavailable
from offshelf.service.heads.registry import HeadRegistry
from offshelf.service.heads.storage import HeadVersion
from offshelf.service.logs import fields
from offshelf.service.models.card_facts import input_text, random_init
from offshelf.service.models.loaded_model import LoadedModel
from offshelf.service.models.pixels_input import PIXELS
from offshelf.service.models.preprocess import Augmentation, input_rule
from offshelf.service.models.registry import ModelRegistry
from offshelf.service.models.statistics import Duration

log = logging.getLogger(__name__)
EXTENSIONS = ("model_repository", "model_configuration", "statistics")
AUGMENTATIONS = {"none": Augmentation.NONE, "flip": Augmentation.FLIP, "10crop": Augmentation.TEN_CROP}
PARAMETERS = ("augmentation", "top_k")
UNLOAD_PARAMETERS = ("unload_dependents",)  # tritonclient's; offshelf has no ensembles
LOAD_PARAMETERS = ("config", *UNLOAD_PARAMETERS)  # config: Triton's config override, as JSON
HEAD_OUTPUTS = ("probabilities", "labels")
Tensor = tuple[str, list[int], bytes]  # datatype, shape, raw contents


def serialize_bytes(items: list[bytes]) -> bytes:
    """The protocol's BYTES layout: each element prefixed by its length (4 bytes, little-endian)."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def deserialize_bytes(raw: bytes, what: str) -> list[bytes]:
    items, position = [], 0
    while position < len(raw):
        if position + 4 > len(raw):
            raise InvalidArgument(f"{what}: truncated BYTES contents (a 4-byte length prefix is cut short)")
        (length,) = struct.unpack_from("<I", raw, position)
        position += 4
        if position + length > len(raw):
            raise InvalidArgument(f"{what}: a BYTES element claims {length} bytes but fewer remain")
        items.append(raw[position : position + length])
        position += length
    return items


class InferenceServicer(pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, models: ModelRegistry, heads: HeadRegistry, max_images: int, is_ready: Callable[[], bool]
    ) -> None:
        self.models = models
        self.heads = heads
        self.max_images = max_images
        self.is_ready = is_ready

    def ServerLive(self, request: pb2.ServerLiveRequest, context: grpc.ServicerContext) -> pb2.ServerLiveResponse:
        return pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb2.ServerReadyRequest, context: grpc.ServicerContext) -> pb2.ServerReadyResponse:
        return pb2.ServerReadyResponse(ready=self.is_ready())

    def ModelReady(self, request: pb2.ModelReadyRequest, context: grpc.ServicerContext) -> pb2.ModelReadyResponse:
        try:
            self._model(request.name, request.version)
        except (NotFound, Unavailable):
            return pb2.ModelReadyResponse(ready=False)
        return pb2.ModelReadyResponse(ready=True)

    def ServerMetadata(
        self, request: pb2.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb2.ServerMetadataResponse:
        return pb2.ServerMetadataResponse(
            name="offshelf", version=package_version("offshelf"), extensions=list(EXTENSIONS)
        )

    def ModelMetadata(
        self, request: pb2.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb2.ModelMetadataResponse:
        model = self._model(request.name, request.version)
        pre = model.card.preprocessing
        tensor = pb2.ModelMetadataResponse.TensorMetadata
        outputs = [tensor(name=o.name, datatype="FP32", shape=[-1, o.dim]) for o in model.card.outputs]
        for head in self._heads_of(model):
            classes = len(head.card.labels)
            outputs += [
                tensor(name=f"{head.card.name}/probabilities", datatype="FP32", shape=[-1, classes]),
                tensor(name=f"{head.card.name}/labels", datatype="BYTES", shape=[-1, -1]),
            ]
        return pb2.ModelMetadataResponse(
            name=model.name,
            versions=[str(m.version) for m in self.models.all()[model.name]],
            platform=PLATFORM,
            inputs=[tensor(name=name, datatype=datatype, shape=[-1, *dims]) for name, datatype, dims in inputs(pre)],
            outputs=outputs,
            parameters={
                "random_init": pb2.InferParameter(bool_param=random_init(model.card)),
                "weights": pb2.InferParameter(string_param=model.card.weights.source),
                "input": pb2.InferParameter(string_param=input_text(pre)),
            },
        )

    def ModelConfig(self, request: pb2.ModelConfigRequest, context: grpc.ServicerContext) -> pb2.ModelConfigResponse:
        model = self._model(request.name, request.version)
        return pb2.ModelConfigResponse(
            config=model_config(model, self.models.repository.serving_config(model.name).version_policy)
        )

    def ModelStatistics(
        self, request: pb2.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> pb2.ModelStatisticsResponse:
        if request.name:
            if request.version:
                models = [self._model(request.name, request.version)]
            else:
                self._model(request.name, "")  # NOT_FOUND for an unknown model
                models = self.models.all()[request.name]
        elif request.version:
            raise InvalidArgument("a version needs a model name; leave both empty for every model")
        else:
            models = [m for versions in self.models.all().values() for m in versions]
        return pb2.ModelStatisticsResponse(model_stats=[statistics_message(m) for m in models])

    def RepositoryIndex(
        self, request: pb2.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> pb2.RepositoryIndexResponse:
        _check_repository(request.repository_name)
        return pb2.RepositoryIndexResponse(
            models=[
                pb2.RepositoryIndexResponse.ModelIndex(
                    name=name, version=str(version), state=state.state, reason=state.reason
                )
                for name, version, state in self.models.index(request.ready)
            ]
        )

    def RepositoryModelLoad(
        self, request: pb2.RepositoryModelLoadRequest, context: grpc.ServicerContext
    ) -> pb2.RepositoryModelLoadResponse:
        _check_control(request, LOAD_PARAMETERS)
        config = request.parameters.get("config")
        override = None
        if config is not None:
            if config.WhichOneof("parameter_choice") != "string_param":
                raise InvalidArgument("parameter config is a model config in JSON: a string parameter")
            override = config_override(config.string_param, request.model_name)
        self.models.load(request.model_name, override)
        return pb2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(
        self, request: pb2.RepositoryModelUnloadRequest, context: grpc.ServicerContext
    ) -> pb2.RepositoryModelUnloadResponse:
        _check_control(request, UNLOAD_PARAMETERS)
        self.models.unload(request.model_name)
        return pb2.RepositoryModelUnloadResponse()

    def ModelInfer(self, request: pb2.ModelInferRequest, context: grpc.ServicerContext) -> pb2.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)
        parameters = _parameters(request)
        requested = [o.name for o in request.outputs] or model.output_names
        model_outputs, head_outputs = self._split_outputs(model, requested)
        arrays = self._run(model, request, parameters["augmentation"])
        tensors: dict[str, Tensor] = {
            name: ("FP32", list(arrays[name].shape), arrays[name].astype("<f4").tobytes()) for name in model_outputs
        }
        for head_name, kinds in head_outputs.items():
            head = self.heads.serving(head_name)
            probabilities = head.probabilities(arrays[head.binding.output])
            if "probabilities" in kinds:
                tensors[f"{head_name}/probabilities"] = (
                    "FP32",
                    list(probabilities.shape),
                    probabilities.astype("<f4").tobytes(),
                )
            if "labels" in kinds:
                k = min(parameters["top_k"], probabilities.shape[1])
                labels = [head.card.labels[i].encode() for row in probabilities for i in np.argsort(-row)[:k]]
                tensors[f"{head_name}/labels"] = ("BYTES", [len(probabilities), k], serialize_bytes(labels))
        response = pb2.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
        for name in requested:
            datatype, shape, raw = tensors[name]
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)
        return response

    def ModelStreamInfer(
        self, requests: Iterator[pb2.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb2.ModelStreamInferResponse]:
        for request in requests:
            try:
                yield pb2.ModelStreamInferResponse(infer_response=self.ModelInfer(request, context))
            except ServiceError as err:
                yield pb2.ModelStreamInferResponse(error_message=f"{status_of(err).name}: {err.message}")
            except Exception:
                log.exception("unexpected error", extra=fields(rpc="ModelStreamInfer"))
                yield pb2.ModelStreamInferResponse(error_message="INTERNAL: unexpected server error; see its log")

    def _model(self, name: str, version: str) -> LoadedModel:
        if not name:
            raise InvalidArgument("model name is empty: name a served model (ListModels lists them)")
        if version and not (version.isascii() and version.isdigit()):  # "²".isdigit() is true
            raise InvalidArgument(f"model version {version!r} is not a number; leave it empty for the latest")
        return self.models.get(name, int(version or 0))

    def _heads_of(self, model: LoadedModel) -> list[HeadVersion]:
        """The heads whose served version was trained on this model version's outputs."""
        served = [entry.served for entry in self.heads.all() if entry.served is not None]
        return [
            head
            for head in served
            if head.binding.output in model.output_names and model.binding(head.binding.output) == head.binding
        ]

    def _split_outputs(self, model: LoadedModel, requested: list[str]) -> tuple[list[str], dict[str, set[str]]]:
        """(model outputs, {head: {probabilities, labels}}) of the requested output names."""
        if len(set(requested)) != len(requested):
            raise InvalidArgument(f"outputs {requested} name one output twice; ask for each once")
        model_outputs: list[str] = []
        head_outputs: dict[str, set[str]] = {}
        for name in requested:
            if name in model.output_names:
                model_outputs.append(name)
                continue
            head_name, _, kind = name.rpartition("/")
            if not head_name or kind not in HEAD_OUTPUTS:
                raise InvalidArgument(
                    f"model {model.name} version {model.version} has no output {name!r}; its outputs are "
                    f"{', '.join(model.output_names)}, and <head>/probabilities or <head>/labels for its heads"
                )
            binding = self.heads.serving(head_name).binding
            if self.models.for_binding(binding, f"head {head_name!r}") is not model:
                raise FailedPrecondition(
                    f"head {head_name!r} was trained on {binding.model} version {binding.version}; "
                    f"send the request to that model"
                )
            head_outputs.setdefault(head_name, set()).add(kind)
        return model_outputs, head_outputs

    def _run(self, model: LoadedModel, request: pb2.ModelInferRequest, augmentation: int) -> dict[str, np.ndarray]:
        pre = model.card.preprocessing
        tensor = request.inputs[0] if len(request.inputs) == 1 else None
        if tensor is None or (tensor.name, tensor.datatype) not in (
            (pre.input_name, "FP32"),
            (ENCODED, "BYTES"),
            (pre.input_name, "BYTES"),  # as ModelMetadata listed it before the names were unique
            (PIXELS, "UINT8"),
        ):
            given = [f"{i.name} ({i.datatype})" for i in request.inputs] or "none"
            raise InvalidArgument(
                f"model {model.name} takes one input: {pre.input_name!r} as FP32 [N, 3, H, W], {ENCODED!r} as BYTES "
                f"[N] encoded images, or {PIXELS!r} as UINT8 [N, H, W, 3]; the request has {given}"
            )
        if request.raw_input_contents and len(request.raw_input_contents) != 1:
            raise InvalidArgument("raw_input_contents must hold one entry per input: exactly one")
        raw = request.raw_input_contents[0] if request.raw_input_contents else None
        shape = list(tensor.shape)
        if tensor.datatype == "BYTES":
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise InvalidArgument(f"a BYTES input has shape [N] or [N, 1] (one encoded image each), not {shape}")
            images = deserialize_bytes(raw, tensor.name) if raw is not None else list(tensor.contents.bytes_contents)
            if len(images) != shape[0]:
                raise InvalidArgument(f"input shape {shape} says {shape[0]} images; the contents hold {len(images)}")
            check_image_count(len(images), self.max_images)
            return model.embed(images, augmentation, [f"{tensor.name}[{i}]" for i in range(len(images))])
        if augmentation != Augmentation.NONE:
            raise InvalidArgument("augmentation applies to BYTES (encoded image) input only; preprocess it yourself")
        rule = input_rule(pre)
        if tensor.datatype == "FP32":
            if len(shape) != 4 or shape[1] != 3 or not rule.fits(shape[2], shape[3]):
                raise InvalidArgument(
                    f"an FP32 input has shape [N, 3, {rule.height}, {rule.width}]{rule.condition} (preprocessed as "
                    f"the model card says), not {shape}; or send encoded images as BYTES [N]"
                )
            check_image_count(shape[0], self.max_images)
            batch = values(shape, raw, tensor.contents.fp32_contents, "FP32", np.dtype("<f4"))
            if not np.isfinite(batch).all():
                raise InvalidArgument("the FP32 input holds NaN or infinite values")
            return model.infer(np.ascontiguousarray(batch, np.float32))
        if len(shape) != 4 or shape[3] != 3 or not rule.fits(shape[1], shape[2]):  # UINT8 pixels
            raise InvalidArgument(
                f"a UINT8 input has shape [N, {rule.height}, {rule.width}, 3]{rule.condition} (RGB pixels of the "
                f"image resized, and cropped, as the model card says), not {shape}"
            )
        check_image_count(shape[0], self.max_images)
        pixels = values(shape, raw, tensor.contents.uint_contents, "UINT8", np.dtype(np.uint8))
        if pixels.dtype != np.uint8:  # from uint_contents, the protocol's typed field for UINT8 (uint32 each)
            if pixels.size and pixels.max() > 255:
                raise InvalidArgument("UINT8 uint_contents hold values above 255")
            pixels = pixels.astype(np.uint8)
        return model.infer_pixels(pixels)


def _check_repository(name: str) -> None:
    if name:
        raise InvalidArgument(f"repository {name!r}: this server has one model repository; leave the name empty")


def _check_control(
    request: pb2.RepositoryModelLoadRequest | pb2.RepositoryModelUnloadRequest, accepted: tuple[str, ...]
) -> None:
    _check_repository(request.repository_name)
    if not request.model_name:
        raise InvalidArgument("model_name is empty: name the model folder to load or unload")
    if any(name.startswith("file:") for name in request.parameters):
        raise InvalidArgument(
            "file: parameters (model files sent with the load) are not accepted: export the version into the "
            "model repository, then load it"
        )
    unknown = sorted(set(request.parameters) - set(accepted))
    if unknown:
        raise InvalidArgument(
            f"parameters {unknown} are not accepted (only {', '.join(accepted)}): a model's versions and settings "
            "come from its folder and serving.json"
        )


def values(shape: list[int], raw: bytes | None, typed: Sequence[float], datatype: str, dtype: np.dtype) -> np.ndarray:
    """An input's values in `shape`: from its raw contents as `dtype`, else from its typed contents field."""
    count = int(np.prod(shape))
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument(
                f"shape {shape} needs {count * dtype.itemsize} bytes of {datatype}; the contents hold {len(raw)}"
            )
        return np.frombuffer(raw, dtype).reshape(shape)
    if len(typed) != count:
        raise InvalidArgument(f"shape {shape} needs {count} typed {datatype} contents; the request holds {len(typed)}")
    return np.asarray(typed).reshape(shape)


def _parameters(request: pb2.ModelInferRequest) -> dict:
    """augmentation (string: none, flip, 10crop) and top_k (int, labels per image) from the request."""
    unknown = sorted(set(request.parameters) - set(PARAMETERS))
    if unknown:
        raise InvalidArgument(f"unknown request parameters {unknown}; accepted: {', '.join(PARAMETERS)}")
    augmentation = request.parameters.get("augmentation")
    name = augmentation.string_param if augmentation is not None else "none"
    if name not in AUGMENTATIONS:
        raise InvalidArgument(f"augmentation {name!r} is not one of {', '.join(AUGMENTATIONS)} (a string parameter)")
    top_k = request.parameters.get("top_k")
    k = top_k.int64_param if top_k is not None else 1
    if k < 1:
        raise InvalidArgument(f"top_k={k}: ask for 1 or more labels per image (an int64 parameter)")
    return {"augmentation": AUGMENTATIONS[name], "top_k": k}


def statistics_message(model: LoadedModel) -> pb2.ModelStatistics:
    """A version's statistics as Triton's ModelStatistics."""
    stats = model.statistics.snapshot()

    def duration(d: Duration) -> pb2.StatisticDuration:
        return pb2.StatisticDuration(count=d.count, ns=d.ns)

    return pb2.ModelStatistics(
        name=model.name,
        version=str(model.version),
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb2.InferStatistics(
            success=duration(stats.success),
            fail=duration(stats.fail),
            queue=duration(stats.queue),
            compute_input=duration(stats.compute_input),
            compute_infer=duration(stats.compute_infer),
        ),
        batch_stats=[pb2.InferBatchStatistics(batch_size=size, compute_infer=duration(d)) for size, d in stats.batches],
    )
