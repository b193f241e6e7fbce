from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelCard(_message.Message):
    __slots__ = ("name", "version", "architecture", "weights", "preprocessing", "outputs", "export", "parity", "agreement")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    architecture: str
    weights: Weights
    preprocessing: Preprocessing
    outputs: _containers.RepeatedCompositeFieldContainer[OutputSpec]
    export: ExportInfo
    parity: Parity
    agreement: Agreement
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., architecture: _Optional[str] = ..., weights: _Optional[_Union[Weights, _Mapping]] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[OutputSpec, _Mapping]]] = ..., export: _Optional[_Union[ExportInfo, _Mapping]] = ..., parity: _Optional[_Union[Parity, _Mapping]] = ..., agreement: _Optional[_Union[Agreement, _Mapping]] = ...) -> None: ...

class Weights(_message.Message):
    __slots__ = ("source", "file_name", "sha256")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    source: str
    file_name: str
    sha256: str
    def __init__(self, source: _Optional[str] = ..., file_name: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("input_name", "resize_shorter", "crop_height", "crop_width", "interpolation", "channel_order", "mean", "std", "mode")
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    RESIZE_SHORTER_FIELD_NUMBER: _ClassVar[int]
    CROP_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CROP_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    input_name: str
    resize_shorter: int
    crop_height: int
    crop_width: int
    interpolation: str
    channel_order: str
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    mode: str
    def __init__(self, input_name: _Optional[str] = ..., resize_shorter: _Optional[int] = ..., crop_height: _Optional[int] = ..., crop_width: _Optional[int] = ..., interpolation: _Optional[str] = ..., channel_order: _Optional[str] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., mode: _Optional[str] = ...) -> None: ...

class OutputSpec(_message.Message):
    __slots__ = ("name", "layer", "pooling", "dim", "l2_normalized", "labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    L2_NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    layer: str
    pooling: str
    dim: int
    l2_normalized: bool
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., layer: _Optional[str] = ..., pooling: _Optional[str] = ..., dim: _Optional[int] = ..., l2_normalized: _Optional[bool] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportInfo(_message.Message):
    __slots__ = ("tool", "tool_version", "torch_version", "opset", "precision", "created_at")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    TOOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    tool: str
    tool_version: str
    torch_version: str
    opset: int
    precision: str
    created_at: str
    def __init__(self, tool: _Optional[str] = ..., tool_version: _Optional[str] = ..., torch_version: _Optional[str] = ..., opset: _Optional[int] = ..., precision: _Optional[str] = ..., created_at: _Optional[str] = ...) -> None: ...

class Parity(_message.Message):
    __slots__ = ("images", "max_abs_diff", "max_abs_diff_by_output", "tolerance")
    class MaxAbsDiffByOutputEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_BY_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    images: int
    max_abs_diff: float
    max_abs_diff_by_output: _containers.ScalarMap[str, float]
    tolerance: float
    def __init__(self, images: _Optional[int] = ..., max_abs_diff: _Optional[float] = ..., max_abs_diff_by_output: _Optional[_Mapping[str, float]] = ..., tolerance: _Optional[float] = ...) -> None: ...

class Agreement(_message.Message):
    __slots__ = ("images", "top1", "max_abs_diff_by_output", "threshold", "forced", "quantization")
    class MaxAbsDiffByOutputEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_BY_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    images: int
    top1: float
    max_abs_diff_by_output: _containers.ScalarMap[str, float]
    threshold: float
    forced: bool
    quantization: str
    def __init__(self, images: _Optional[int] = ..., top1: _Optional[float] = ..., max_abs_diff_by_output: _Optional[_Mapping[str, float]] = ..., threshold: _Optional[float] = ..., forced: _Optional[bool] = ..., quantization: _Optional[str] = ...) -> None: ...
