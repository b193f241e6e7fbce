from offshelf.protos.v1 import embedding_pb2 as _embedding_pb2
from offshelf.protos.v1 import index_pb2 as _index_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState

class LabelledImage(_message.Message):
    __slots__ = ("image", "label")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    label: str
    def __init__(self, image: _Optional[bytes] = ..., label: _Optional[str] = ...) -> None: ...

class LabelledImages(_message.Message):
    __slots__ = ("model", "version", "output", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    output: str
    images: _containers.RepeatedCompositeFieldContainer[LabelledImage]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., output: _Optional[str] = ..., images: _Optional[_Iterable[_Union[LabelledImage, _Mapping]]] = ...) -> None: ...

class TrainHeadRequest(_message.Message):
    __slots__ = ("name", "kind", "collection", "images", "add_classes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ADD_CLASSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    collection: str
    images: LabelledImages
    add_classes: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., collection: _Optional[str] = ..., images: _Optional[_Union[LabelledImages, _Mapping]] = ..., add_classes: _Optional[bool] = ...) -> None: ...

class HeadJob(_message.Message):
    __slots__ = ("head", "version", "state", "progress", "message")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    head: str
    version: int
    state: JobState
    progress: float
    message: str
    def __init__(self, head: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class HeadMetrics(_message.Message):
    __slots__ = ("examples", "folds", "cv_accuracy", "confusion", "c")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    CV_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    examples: int
    folds: int
    cv_accuracy: float
    confusion: _containers.RepeatedScalarFieldContainer[int]
    c: float
    def __init__(self, examples: _Optional[int] = ..., folds: _Optional[int] = ..., cv_accuracy: _Optional[float] = ..., confusion: _Optional[_Iterable[int]] = ..., c: _Optional[float] = ...) -> None: ...

class HeadCard(_message.Message):
    __slots__ = ("name", "version", "kind", "binding", "labels", "metrics", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    kind: str
    binding: _index_pb2.Binding
    labels: _containers.RepeatedScalarFieldContainer[str]
    metrics: HeadMetrics
    created_at: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., kind: _Optional[str] = ..., binding: _Optional[_Union[_index_pb2.Binding, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Union[HeadMetrics, _Mapping]] = ..., created_at: _Optional[str] = ...) -> None: ...

class Head(_message.Message):
    __slots__ = ("card", "job", "versions")
    CARD_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    card: HeadCard
    job: HeadJob
    versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, card: _Optional[_Union[HeadCard, _Mapping]] = ..., job: _Optional[_Union[HeadJob, _Mapping]] = ..., versions: _Optional[_Iterable[int]] = ...) -> None: ...

class GetHeadRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListHeadsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListHeadsResponse(_message.Message):
    __slots__ = ("heads",)
    HEADS_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.RepeatedCompositeFieldContainer[Head]
    def __init__(self, heads: _Optional[_Iterable[_Union[Head, _Mapping]]] = ...) -> None: ...

class DeleteHeadRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteHeadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "head", "images", "k", "augmentation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    head: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    k: int
    augmentation: _embedding_pb2.Augmentation
    def __init__(self, model: _Optional[str] = ..., head: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., k: _Optional[int] = ..., augmentation: _Optional[_Union[_embedding_pb2.Augmentation, str]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("top",)
    TOP_FIELD_NUMBER: _ClassVar[int]
    top: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, top: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("head", "version", "results")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    head: str
    version: int
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, head: _Optional[str] = ..., version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...
