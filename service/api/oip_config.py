"""What the Open Inference Protocol says of a model: its inputs (ModelMetadata) and its configuration in Triton's
terms (ModelConfig, read by tritonclient's get_model_config)."""

from __future__ import annotations

from offshelf.protos.inference import model_config_pb2 as config_pb2
from offshelf.protos.v1 import model_card_pb2 as card_pb2
from offshelf.service.models.pixels_input import PIXELS
from offshelf.service.models.preprocess import input_size
from offshelf.service.models.registry import LoadedModel
from offshelf.service.models.runtime import CPU
from offshelf.service.models.serving_config import VersionPolicy

PLATFORM = "onnxruntime_onnx"
DATA_TYPES = {"FP32": config_pb2.TYPE_FP32, "BYTES": config_pb2.TYPE_STRING, "UINT8": config_pb2.TYPE_UINT8}
LAYOUTS = {"FP32": config_pb2.ModelInput.FORMAT_NCHW, "UINT8": config_pb2.ModelInput.FORMAT_NHWC}


def inputs(pre: card_pb2.Preprocessing) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape without the batch dimension) of each input a request may send, one per request: the
    model's input as FP32 tensors or as BYTES (encoded images; the same name), and the uint8 pixels."""
    height, width = input_size(pre)  # -1: any (an image kept whole)
    return [
        (pre.input_name, "FP32", [3, height, width]),
        (pre.input_name, "BYTES", [1]),
        (PIXELS, "UINT8", [height, width, 3]),
    ]


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
