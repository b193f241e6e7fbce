"""What the Open Inference Protocol says of a model: its inputs (ModelMetadata) and its configuration in Triton's
terms (ModelConfig, read by tritonclient's get_model_config; and the config override of RepositoryModelLoad)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from pydantic import ValidationError

from offshelf.protos.inference import model_config_pb2 as config_pb2
from offshelf.protos.v1 import model_card_pb2 as card_pb2
from offshelf.service.errors import InvalidArgument
from offshelf.service.models.loaded_model import LoadedModel
from offshelf.service.models.pixels_input import PIXELS
from offshelf.service.models.preprocess import input_size
from offshelf.service.models.runtime import CPU
from offshelf.service.models.serving_config import ServingConfig, VersionPolicy, problems

PLATFORM = "onnxruntime_onnx"
ENCODED = "encoded"  # the BYTES input: encoded images (requests may also send them under the model's input name)
DATA_TYPES = {"FP32": config_pb2.TYPE_FP32, "BYTES": config_pb2.TYPE_STRING, "UINT8": config_pb2.TYPE_UINT8}
LAYOUTS = {"FP32": config_pb2.ModelInput.FORMAT_NCHW, "UINT8": config_pb2.ModelInput.FORMAT_NHWC}
GROUP = config_pb2.ModelInstanceGroup
PROVIDERS = {GROUP.KIND_CPU: "cpu", GROUP.KIND_GPU: "cuda"}
SERVED_BY = {"platform": PLATFORM, "backend": "onnxruntime"}
ORDER = ("max_batch_size", "version_policy", "instance_group", "parameters", "dynamic_batching")  # later ones check
PARAMETERS = ("eager_batching", "max_queue_images", "intra_op_threads", "execution_provider")
OVERRIDE_FIELDS = (
    "max_batch_size, version_policy, instance_group (count, kind), dynamic_batching (max_queue_delay_microseconds) "
    f"and parameters ({', '.join(PARAMETERS)})"
)


def inputs(pre: card_pb2.Preprocessing) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape without the batch dimension) of each input a request may send, one per request: the
    model's input as FP32 tensors, encoded images as BYTES, and the uint8 pixels. Names are unique: Triton's
    clients index inputs by name."""
    height, width = input_size(pre)  # -1: any (an image kept whole)
    return [
        (pre.input_name, "FP32", [3, height, width]),
        (ENCODED, "BYTES", [1]),
        (PIXELS, "UINT8", [height, width, 3]),
    ]


def config_override(text: str, model: str) -> ServingConfig:
    """The serving config of Triton's config override (RepositoryModelLoad's `config`: a ModelConfig in JSON) for
    what serving.json holds; InvalidArgument names anything else it sets."""
    try:
        keys = json.loads(text)
        config = json_format.Parse(text, config_pb2.ModelConfig())
    except (ValueError, json_format.ParseError) as err:
        raise InvalidArgument(f"config override: not a Triton ModelConfig in JSON ({err})") from err
    by_json_name = {f.json_name: f.name for f in config_pb2.ModelConfig.DESCRIPTOR.fields}
    values: dict[str, Any] = {}
    given = {by_json_name.get(k, k) for k in keys}
    for key in [*ORDER, *sorted(given - set(ORDER))]:
        if key not in given:
            continue
        if key == "max_batch_size":
            values["max_batch_size"] = config.max_batch_size
        elif key == "version_policy":
            values["version_policy"] = _policy(config.version_policy)
        elif key == "instance_group":
            values.update(_instances(config.instance_group))
        elif key == "parameters":
            values.update(_parameters(config.parameters, values.get("execution_provider")))
        elif key == "dynamic_batching":
            values.update(_batching(config.dynamic_batching, values.get("max_batch_size")))
        elif key == "name":
            if config.name != model:
                raise InvalidArgument(f"config override names model {config.name!r}; it is loaded as {model!r}")
        elif key in SERVED_BY:
            if getattr(config, key) != SERVED_BY[key]:
                raise InvalidArgument(
                    f"config override: {key} {getattr(config, key)!r}; offshelf serves {SERVED_BY[key]}"
                )
        else:
            raise _refused(key)
    try:
        return ServingConfig.model_validate(values)
    except ValidationError as err:
        raise InvalidArgument(f"config override: {problems(err, 'the config')}") from err


def _refused(field: str) -> InvalidArgument:
    return InvalidArgument(
        f"config override sets {field}, which offshelf does not take from it (inputs and outputs come from the model "
        f"card); it takes {OVERRIDE_FIELDS}"
    )


def _policy(policy: config_pb2.ModelVersionPolicy) -> dict[str, Any]:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return {"all": True}
    if choice == "specific":
        return {"specific": list(policy.specific.versions)}
    if choice == "latest":
        return {"latest": policy.latest.num_versions}
    return {}


def _instances(groups: Any) -> dict[str, Any]:
    if len(groups) != 1:
        raise InvalidArgument(f"config override: offshelf serves one instance_group, not {len(groups)}")
    (group,) = groups
    values: dict[str, Any] = {}
    for field, _ in group.ListFields():
        if field.name == "count":
            values["instances"] = group.count
        elif field.name == "kind" and group.kind in PROVIDERS:
            values["execution_provider"] = PROVIDERS[group.kind]
        elif field.name != "name":
            raise _refused(f"instance_group.{field.name}")
    return values


def _parameters(parameters: Any, provider: str | None) -> dict[str, Any]:
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise _refused(f"parameters {unknown}")
    values = {name: parameter.string_value for name, parameter in parameters.items()}
    if provider is not None and values.get("execution_provider", provider) != provider:
        raise InvalidArgument(
            f"config override: instance_group kind says {provider}, parameters.execution_provider "
            f"{values['execution_provider']}; give one"
        )
    return values


def _batching(batching: config_pb2.ModelDynamicBatching, max_batch_size: int | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field, _ in batching.ListFields():
        if field.name == "max_queue_delay_microseconds":
            values["max_batch_delay_ms"] = batching.max_queue_delay_microseconds / 1000
        elif field.name != "preferred_batch_size" or list(batching.preferred_batch_size) != [max_batch_size]:
            raise _refused(f"dynamic_batching.{field.name}")  # [max_batch_size] only restates it, as ModelConfig does
    return values


def version_policy(policy: VersionPolicy) -> config_pb2.ModelVersionPolicy:
    if policy.all:
        return config_pb2.ModelVersionPolicy(all=config_pb2.ModelVersionPolicy.All())
    if policy.specific is not None:
        return config_pb2.ModelVersionPolicy(specific=config_pb2.ModelVersionPolicy.Specific(versions=policy.specific))
    return config_pb2.ModelVersionPolicy(latest=config_pb2.ModelVersionPolicy.Latest(num_versions=policy.latest or 1))


def model_config(model: LoadedModel, policy: VersionPolicy) -> config_pb2.ModelConfig:
    """The model version's configuration: its inputs and outputs, and the settings it is served with (the server's,
    with its serving.json applied)."""
    settings = model.settings
    on_cpu = model.runtime.provider == CPU
    group = config_pb2.ModelInstanceGroup
    return config_pb2.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend="onnxruntime",
        version_policy=version_policy(policy),
        max_batch_size=settings.max_batch_size,
        input=[
            config_pb2.ModelInput(
                name=name,
                data_type=DATA_TYPES[datatype],
                format=LAYOUTS.get(datatype, config_pb2.ModelInput.FORMAT_NONE),
                dims=dims,
                optional=True,
            )
            for name, datatype, dims in inputs(model.card.preprocessing)
        ],
        output=[
            config_pb2.ModelOutput(name=o.name, data_type=config_pb2.TYPE_FP32, dims=[o.dim])
            for o in model.card.outputs
        ],
        dynamic_batching=config_pb2.ModelDynamicBatching(
            preferred_batch_size=[settings.max_batch_size],
            max_queue_delay_microseconds=int(settings.max_batch_delay_ms * 1000),
        ),
        instance_group=[
            group(name=model.name, kind=group.KIND_CPU if on_cpu else group.KIND_GPU, count=settings.instances)
        ],
        default_model_filename="model.onnx",
        parameters={
            name: config_pb2.ModelParameter(string_value=str(value))
            for name, value in {
                "execution_provider": model.runtime.provider,
                "eager_batching": settings.eager_batching,
                "max_queue_images": settings.max_queue_images,
                "intra_op_threads": settings.intra_op_threads,
            }.items()
        },
    )
