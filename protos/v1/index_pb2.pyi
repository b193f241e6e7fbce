from offshelf.protos.v1 import embedding_pb2 as _embedding_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_INNER_PRODUCT: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]
METRIC_INNER_PRODUCT: Metric
METRIC_L2: Metric

class HnswParams(_message.Message):
    __slots__ = ("m", "ef_construction", "ef_search")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construction: int
    ef_search: int
    def __init__(self, m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class IvfPqParams(_message.Message):
    __slots__ = ("nlist", "m", "nbits", "nprobe", "train_size", "refine_factor")
    NLIST_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    NBITS_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    REFINE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    nlist: int
    m: int
    nbits: int
    nprobe: int
    train_size: int
    refine_factor: int
    def __init__(self, nlist: _Optional[int] = ..., m: _Optional[int] = ..., nbits: _Optional[int] = ..., nprobe: _Optional[int] = ..., train_size: _Optional[int] = ..., refine_factor: _Optional[int] = ...) -> None: ...

class Binding(_message.Message):
    __slots__ = ("model", "version", "output", "pooling", "preprocessing_hash", "dim")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_HASH_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    output: str
    pooling: str
    preprocessing_hash: str
    dim: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., output: _Optional[str] = ..., pooling: _Optional[str] = ..., preprocessing_hash: _Optional[str] = ..., dim: _Optional[int] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "model", "version", "output", "metric", "index_type", "hnsw", "ivfpq", "dim", "thumbnail_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    IVFPQ_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    version: int
    output: str
    metric: Metric
    index_type: str
    hnsw: HnswParams
    ivfpq: IvfPqParams
    dim: int
    thumbnail_size: int
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., output: _Optional[str] = ..., metric: _Optional[_Union[Metric, str]] = ..., index_type: _Optional[str] = ..., hnsw: _Optional[_Union[HnswParams, _Mapping]] = ..., ivfpq: _Optional[_Union[IvfPqParams, _Mapping]] = ..., dim: _Optional[int] = ..., thumbnail_size: _Optional[int] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "binding", "metric", "index_type", "hnsw", "ivfpq", "count", "bytes_on_disk", "trained", "whitening_dim", "thumbnail_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    IVFPQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    WHITENING_DIM_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    binding: Binding
    metric: Metric
    index_type: str
    hnsw: HnswParams
    ivfpq: IvfPqParams
    count: int
    bytes_on_disk: int
    trained: bool
    whitening_dim: int
    thumbnail_size: int
    def __init__(self, name: _Optional[str] = ..., binding: _Optional[_Union[Binding, _Mapping]] = ..., metric: _Optional[_Union[Metric, str]] = ..., index_type: _Optional[str] = ..., hnsw: _Optional[_Union[HnswParams, _Mapping]] = ..., ivfpq: _Optional[_Union[IvfPqParams, _Mapping]] = ..., count: _Optional[int] = ..., bytes_on_disk: _Optional[int] = ..., trained: _Optional[bool] = ..., whitening_dim: _Optional[int] = ..., thumbnail_size: _Optional[int] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "image", "vector", "label", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    vector: _embedding_pb2.Vector
    label: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., vector: _Optional[_Union[_embedding_pb2.Vector, _Mapping]] = ..., label: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AddRequest(_message.Message):
    __slots__ = ("collection", "items", "model", "output")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    model: str
    output: str
    def __init__(self, collection: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., model: _Optional[str] = ..., output: _Optional[str] = ...) -> None: ...

class AddResponse(_message.Message):
    __slots__ = ("ids", "count")
    IDS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    count: int
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., count: _Optional[int] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("collection", "ids", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("labels", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Values
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Values, _Mapping]] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.MessageMap[str, Values]
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, Values]] = ...) -> None: ...

class Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class StoredItem(_message.Message):
    __slots__ = ("id", "label", "metadata", "vector", "thumbnail")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: str
    metadata: _containers.ScalarMap[str, str]
    vector: _embedding_pb2.Vector
    thumbnail: bytes
    def __init__(self, id: _Optional[str] = ..., label: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., vector: _Optional[_Union[_embedding_pb2.Vector, _Mapping]] = ..., thumbnail: _Optional[bytes] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("collection", "ids", "with_vectors", "with_thumbnails")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    WITH_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    with_thumbnails: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ..., with_thumbnails: _Optional[bool] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("items", "not_found")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StoredItem]
    not_found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[StoredItem, _Mapping]]] = ..., not_found: _Optional[_Iterable[str]] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("collection", "page_size", "page_token", "filter", "with_vectors", "with_thumbnails")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    WITH_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    page_token: str
    filter: Filter
    with_vectors: bool
    with_thumbnails: bool
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., with_vectors: _Optional[bool] = ..., with_thumbnails: _Optional[bool] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StoredItem]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[StoredItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RemoveResponse(_message.Message):
    __slots__ = ("removed", "not_found", "count")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    removed: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    count: int
    def __init__(self, removed: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ..., count: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "image", "vector", "id", "k", "flip", "ef_search", "nprobe", "model", "output", "filter", "min_score", "query_expansion", "qe_alpha", "with_thumbnails")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FLIP_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    QUERY_EXPANSION_FIELD_NUMBER: _ClassVar[int]
    QE_ALPHA_FIELD_NUMBER: _ClassVar[int]
    WITH_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: bytes
    vector: _embedding_pb2.Vector
    id: str
    k: int
    flip: bool
    ef_search: int
    nprobe: int
    model: str
    output: str
    filter: Filter
    min_score: float
    query_expansion: int
    qe_alpha: float
    with_thumbnails: bool
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[bytes] = ..., vector: _Optional[_Union[_embedding_pb2.Vector, _Mapping]] = ..., id: _Optional[str] = ..., k: _Optional[int] = ..., flip: _Optional[bool] = ..., ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., model: _Optional[str] = ..., output: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., min_score: _Optional[float] = ..., query_expansion: _Optional[int] = ..., qe_alpha: _Optional[float] = ..., with_thumbnails: _Optional[bool] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "label", "metadata", "thumbnail")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    label: str
    metadata: _containers.ScalarMap[str, str]
    thumbnail: bytes
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., thumbnail: _Optional[bytes] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class AugmentDatabaseRequest(_message.Message):
    __slots__ = ("collection", "neighbours", "alpha")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    collection: str
    neighbours: int
    alpha: float
    def __init__(self, collection: _Optional[str] = ..., neighbours: _Optional[int] = ..., alpha: _Optional[float] = ...) -> None: ...

class TrainWhiteningRequest(_message.Message):
    __slots__ = ("collection", "dim", "learn_from")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    LEARN_FROM_FIELD_NUMBER: _ClassVar[int]
    collection: str
    dim: int
    learn_from: str
    def __init__(self, collection: _Optional[str] = ..., dim: _Optional[int] = ..., learn_from: _Optional[str] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("image", "vector", "id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    vector: _embedding_pb2.Vector
    id: str
    def __init__(self, image: _Optional[bytes] = ..., vector: _Optional[_Union[_embedding_pb2.Vector, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("collection", "queries", "k", "flip", "ef_search", "nprobe", "model", "output", "filter", "min_score", "query_expansion", "qe_alpha", "with_thumbnails")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FLIP_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    QUERY_EXPANSION_FIELD_NUMBER: _ClassVar[int]
    QE_ALPHA_FIELD_NUMBER: _ClassVar[int]
    WITH_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: _containers.RepeatedCompositeFieldContainer[Query]
    k: int
    flip: bool
    ef_search: int
    nprobe: int
    model: str
    output: str
    filter: Filter
    min_score: float
    query_expansion: int
    qe_alpha: float
    with_thumbnails: bool
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[Query, _Mapping]]] = ..., k: _Optional[int] = ..., flip: _Optional[bool] = ..., ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., model: _Optional[str] = ..., output: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., min_score: _Optional[float] = ..., query_expansion: _Optional[int] = ..., qe_alpha: _Optional[float] = ..., with_thumbnails: _Optional[bool] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...
