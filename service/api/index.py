"""The offshelf.v1.Index servicer: request validation, embedding of images, and collection calls."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
import numpy as np

from offshelf.protos.v1 import index_pb2 as pb2
from offshelf.protos.v1 import index_pb2_grpc as pb2_grpc
from offshelf.protos.v1.embedding_pb2 import AUGMENTATION_FLIP, AUGMENTATION_NONE, Vector
from offshelf.service import tracing
from offshelf.service.api.checks import check_image_limit, check_name
from offshelf.service.api.limits import ResponseLimit, hits_bytes, items_bytes, vector_bytes
from offshelf.service.errors import FailedPrecondition, InvalidArgument, ServiceError
from offshelf.service.index.config import CollectionConfig, CollectionInfo, HnswParams, IvfPqParams, Metric
from offshelf.service.index.contract import Filter, Item, Row
from offshelf.service.index.parameters import MAX_EF, with_defaults
from offshelf.service.index.query_expansion import DEFAULT_ALPHA, MAX_EXPANSION
from offshelf.service.index.thumbnails import MAX_SIZE as MAX_THUMBNAIL
from offshelf.service.index.thumbnails import MIN_SIZE as MIN_THUMBNAIL
from offshelf.service.index.thumbnails import thumbnail
from offshelf.service.metrics import Metrics
from offshelf.service.models.binding import Binding, describe
from offshelf.service.models.registry import ModelRegistry
from offshelf.service.settings import ServiceSettings

if TYPE_CHECKING:
    from offshelf.service.index.contract import CollectionCatalog, CollectionStore

MAX_METADATA_ENTRIES, MAX_METADATA_BYTES, MAX_ID_BYTES = 16, 1024, 256
MAX_FILTER_VALUES, MAX_PAGE_SIZE = 100, 1000
MAX_LABEL_BYTES = 1024
MAX_HITS = 100_000  # queries x k in one Search or SearchBatch response
MAX_DIM = 32_768  # of one's own vectors: Milvus's limit


class IndexServicer(pb2_grpc.IndexServicer):
    def __init__(
        self, collections: CollectionCatalog, models: ModelRegistry, settings: ServiceSettings, metrics: Metrics
    ):
        self.collections = collections
        self.metrics = metrics
        self.models = models
        self.max_items = settings.max_items_per_add
        self.max_images = settings.max_images_per_request
        self.max_k = settings.max_search_k
        self.response = ResponseLimit(settings.max_response_bytes)

    # --- collections -------------------------------------------------------------------------

    def CreateCollection(self, request: pb2.CreateCollectionRequest, context: grpc.ServicerContext) -> pb2.Collection:
        check_name("collection", request.name)
        if request.metric not in pb2.Metric.values():
            raise InvalidArgument(f"metric {request.metric} is unknown; use METRIC_INNER_PRODUCT or METRIC_L2")
        config = _config(request, _binding(request, self.models))
        with_defaults(config)
        return _collection_message(self.collections.create(config).info())

    def ListCollections(self, request: pb2.ListCollectionsRequest, context: grpc.ServicerContext):
        return pb2.ListCollectionsResponse(collections=[_collection_message(c.info()) for c in self.collections.all()])

    def GetCollection(self, request: pb2.GetCollectionRequest, context: grpc.ServicerContext) -> pb2.Collection:
        return _collection_message(self.collections.get(request.name).info())

    def DeleteCollection(self, request: pb2.DeleteCollectionRequest, context: grpc.ServicerContext):
        self.collections.delete(request.name)
        return pb2.DeleteCollectionResponse()

    def TrainWhitening(self, request: pb2.TrainWhiteningRequest, context: grpc.ServicerContext) -> pb2.Collection:
        collection = self.collections.get(request.collection)
        if request.dim < 0:
            raise InvalidArgument("dim must be 0 (full) or positive")
        if not request.learn_from:
            collection.train_whitening(request.dim)
            return _collection_message(collection.info())
        if request.learn_from == request.collection:
            raise InvalidArgument("learn_from names the collection itself; leave it empty for its own vectors")
        source = self.collections.get(request.learn_from)
        if source.config.binding != collection.config.binding:
            raise FailedPrecondition(
                f"collection {source.name!r} holds {_describe(source.config.binding)}, collection "
                f"{collection.name!r} {_describe(collection.config.binding)}: whitening is learned from vectors of "
                "the same model output"
            )
        collection.train_whitening(request.dim, source.stored_vectors(), source.name)
        return _collection_message(collection.info())

    def AugmentDatabase(self, request: pb2.AugmentDatabaseRequest, context: grpc.ServicerContext) -> pb2.Collection:
        collection = self.collections.get(request.collection)
        if not 1 <= request.neighbours <= MAX_EXPANSION:
            raise InvalidArgument(f"neighbours={request.neighbours}: 1 to {MAX_EXPANSION}")
        alpha = _alpha(request.alpha, "alpha")
        if collection.config.metric != Metric.INNER_PRODUCT:
            raise InvalidArgument("augmentation weights neighbours by similarity: it needs an inner-product collection")
        collection.augment(request.neighbours, alpha)
        return _collection_message(collection.info())

    # --- writes ------------------------------------------------------------------------------

    def Add(self, request: pb2.AddRequest, context: grpc.ServicerContext) -> pb2.AddResponse:
        ids, count = self._add(request)
        return pb2.AddResponse(ids=ids, count=count)

    def AddStream(self, requests: Iterator[pb2.AddRequest], context: grpc.ServicerContext) -> pb2.AddResponse:
        ids: list[str] = []
        count = None
        for request in requests:
            added, count = self._add(request)
            ids += added
        if count is None:
            raise InvalidArgument("the stream carried no AddRequest")
        return pb2.AddResponse(ids=ids, count=count)

    def _add(self, request: pb2.AddRequest) -> tuple[list[str], int]:
        """Validates and applies one AddRequest; returns the ids and the collection's count afterwards."""
        collection = self.collections.get(request.collection)
        items = request.items
        if not items:
            raise InvalidArgument("no items: send at least one item with an image or a vector")
        if len(items) > self.max_items:
            raise InvalidArgument(
                f"{len(items)} items in one request, more than the limit of {self.max_items}; "
                "split them over several requests (or use AddStream)"
            )
        _check_claimed_binding(collection, request.model, request.output)
        seen: set[str] = set()
        for i, item in enumerate(items):
            _check_item(i, item, collection.dim)
            if item.id and item.id in seen:
                raise InvalidArgument(f"item {i}: id {item.id!r} appears twice in the request", item=i)
            seen.add(item.id)
        vectors = np.zeros((len(items), collection.dim), np.float32)
        image_rows = [i for i, item in enumerate(items) if item.WhichOneof("content") == "image"]
        check_image_limit(len(image_rows), self.max_images, "image items")
        thumbnails = [b""] * len(items)
        if image_rows:
            try:
                embedded = [items[i].image for i in image_rows]
                vectors[image_rows] = _embed(self.models, collection, embedded, [f"item {i}" for i in image_rows])
            except ServiceError as err:
                if err.item is not None:  # the image's position among those embedded
                    err.item = image_rows[err.item]
                raise
        for i, item in enumerate(items):
            if item.WhichOneof("content") == "vector":
                vectors[i] = item.vector.values
            elif collection.config.thumbnail_size:  # an image the model has decoded
                thumbnails[i] = thumbnail(item.image, collection.config.thumbnail_size)
        batch: list[Item] = [(item.id, item.label, dict(item.metadata)) for item in items]
        return collection.add(batch, collection.prepare(vectors), thumbnails)

    def Remove(self, request: pb2.RemoveRequest, context: grpc.ServicerContext) -> pb2.RemoveResponse:
        collection = self.collections.get(request.collection)
        where = _filter(request.filter, collection)
        if bool(request.ids) == bool(where):
            raise InvalidArgument("name the items to remove by ids or by a non-empty filter (one of the two)")
        if where:
            removed, count = collection.remove_where(where)
            return pb2.RemoveResponse(removed=removed, count=count)
        _check_id_count(len(request.ids), self.max_items)
        removed, not_found, count = collection.remove(list(request.ids))
        return pb2.RemoveResponse(removed=removed, not_found=not_found, count=count)

    # --- reads -------------------------------------------------------------------------------

    def GetItems(self, request: pb2.GetItemsRequest, context: grpc.ServicerContext) -> pb2.GetItemsResponse:
        collection = self.collections.get(request.collection)
        if not request.ids:
            raise InvalidArgument("no ids: name the items to get")
        _check_id_count(len(request.ids), self.max_items)
        dim = collection.dim if request.with_vectors else 0
        fix = "get fewer ids per call" + (", or without vectors" if dim else "")
        wanted = len(set(request.ids))
        self.response.check(wanted * vector_bytes(dim), f"{wanted} vectors", fix)
        found = collection.get(list(request.ids))
        self.response.check(items_bytes((row for row, _ in found.values()), dim), f"{len(found)} items", fix)
        answer = pb2.GetItemsResponse(
            items=[
                _stored(found[i][0], found[i][1] if request.with_vectors else None)
                for i in dict.fromkeys(request.ids)
                if i in found
            ],
            not_found=[i for i in dict.fromkeys(request.ids) if i not in found],
        )
        if request.with_thumbnails:
            _attach_thumbnails(collection, answer.items, self.response, fix)
        return answer

    def ListItems(self, request: pb2.ListItemsRequest, context: grpc.ServicerContext) -> pb2.ListItemsResponse:
        collection = self.collections.get(request.collection)
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size={request.page_size}: ask for 1 to {MAX_PAGE_SIZE} (0: 100)")
        size = request.page_size or 100
        where = _filter(request.filter, collection)
        listing = hashlib.sha256(request.filter.SerializeToString(deterministic=True)).hexdigest()[:16]
        dim = collection.dim if request.with_vectors else 0
        fix = "ask for a smaller page_size" + (", or without vectors" if dim else "")
        self.response.check(size * vector_bytes(dim), f"{size} vectors", fix)
        page = collection.page(_after(request.page_token, listing), size + 1, where, request.with_vectors)
        self.response.check(items_bytes((row for row, _ in page[:size]), dim), f"{min(size, len(page))} items", fix)
        next_token = _page_token(page[size - 1][0].id, listing) if len(page) > size else ""
        answer = pb2.ListItemsResponse(
            items=[_stored(row, vector) for row, vector in page[:size]], next_page_token=next_token
        )
        if request.with_thumbnails:
            _attach_thumbnails(collection, answer.items, self.response, fix)
        return answer

    # --- search ------------------------------------------------------------------------------

    def Search(self, request: pb2.SearchRequest, context: grpc.ServicerContext) -> pb2.SearchResponse:
        kind = request.WhichOneof("query")
        query = pb2.Query(**{kind: getattr(request, kind)}) if kind else pb2.Query()
        (result,) = self._search(request, [query], ["query"])
        return result

    def SearchBatch(self, request: pb2.SearchBatchRequest, context: grpc.ServicerContext) -> pb2.SearchBatchResponse:
        if not request.queries:
            raise InvalidArgument("no queries: send at least one query")
        if len(request.queries) > self.max_items:
            raise InvalidArgument(
                f"{len(request.queries)} queries in one request, more than the limit of "
                f"{self.max_items}; split them over several requests"
            )
        names = [f"query {i}" for i in range(len(request.queries))]
        return pb2.SearchBatchResponse(results=self._search(request, list(request.queries), names))

    def _search(self, request, queries: list[pb2.Query], names: list[str]) -> list[pb2.SearchResponse]:
        """Search and SearchBatch: the request's common fields, then one vector per query, then one FAISS batch."""
        collection = self.collections.get(request.collection)
        _check_search(request, collection, len(queries), self.max_k)
        _check_claimed_binding(collection, request.model, request.output)
        where = _filter(request.filter, collection)
        min_score = request.min_score if request.HasField("min_score") else None
        expansion, alpha = _expansion(request, collection)
        vectors = self._query_vectors(collection, queries, names, request.flip)
        started = time.perf_counter()
        with tracing.tracer.start_as_current_span("search", attributes={"queries": len(queries), "k": request.k}):
            own_ids = [q.id if q.WhichOneof("query") == "id" else None for q in queries] if expansion else []
            hits = collection.search(
                vectors, request.k, request.ef_search, request.nprobe, where, min_score, expansion, alpha, own_ids
            )
        self.metrics.search_seconds.labels(collection.config.index_type).observe(time.perf_counter() - started)
        self.response.check(
            hits_bytes(hits),
            f"{sum(map(len, hits))} hits with their labels and metadata",
            "send fewer queries per call or ask for fewer results (k)",
        )
        answers = [
            pb2.SearchResponse(
                hits=[pb2.Hit(id=i, score=score, label=label, metadata=meta) for i, score, label, meta in row]
            )
            for row in hits
        ]
        if request.with_thumbnails:
            every = [hit for answer in answers for hit in answer.hits]
            _attach_thumbnails(collection, every, self.response, "ask for fewer results (k), or without thumbnails")
        return answers

    def _query_vectors(
        self, collection: CollectionStore, queries: list[pb2.Query], names: list[str], flip: bool
    ) -> np.ndarray:
        """One vector per query: its own, the stored vector of an id, or an image's embedding."""
        vectors = np.zeros((len(queries), collection.dim), np.float32)
        images = []
        for i, (query, name) in enumerate(zip(queries, names, strict=True)):
            kind = query.WhichOneof("query")
            if kind is None:
                raise InvalidArgument(f"{name} is empty: set image, vector or id")
            if kind == "vector":
                _check_vector(f"{name} vector", query.vector.values, collection.dim)
                vectors[i] = query.vector.values
            elif kind == "id":
                vectors[i] = collection.vector_of(query.id)
            else:
                images.append(i)
        check_image_limit(len(images), self.max_images, "image queries")
        if images:
            augmentation = AUGMENTATION_FLIP if flip else AUGMENTATION_NONE
            named = [f"{names[i]} image" for i in images]
            vectors[images] = _embed(self.models, collection, [queries[i].image for i in images], named, augmentation)
        return vectors


def _embed(
    models: ModelRegistry, collection: CollectionStore, images: list[bytes], names: list[str], augmentation: int = 0
) -> np.ndarray:
    if not collection.config.binding.model:
        raise FailedPrecondition(
            f"collection {collection.name!r} holds {_describe(collection.config.binding)}: it has no model to "
            "embed images with; send vectors (or query by id), or create a collection with a model for images"
        )
    model = models.for_binding(collection.config.binding, f"collection {collection.name!r}")
    return model.embed(images, augmentation, names)[collection.config.binding.output]


def _attach_thumbnails(collection: CollectionStore, answers, limit: ResponseLimit, fix: str) -> None:
    """Each answered item's or hit's thumbnail, within the response limit."""
    found = collection.thumbnails(list(dict.fromkeys(answer.id for answer in answers)))
    limit.check(sum(len(found.get(a.id, b"")) for a in answers), f"{len(found)} thumbnails", fix)
    for answer in answers:
        answer.thumbnail = found.get(answer.id, b"")


def _check_id_count(count: int, limit: int) -> None:
    if count > limit:
        raise InvalidArgument(f"{count} ids in one request, more than the limit of {limit}")


def _check_search(request, collection: CollectionStore, queries: int, max_k: int) -> None:
    """The limits of Search and SearchBatch requests."""
    if not 1 <= request.k <= max_k:
        raise InvalidArgument(f"k={request.k}: ask for 1 to {max_k} results")
    if request.ef_search < 0 or request.nprobe < 0:
        raise InvalidArgument("ef_search and nprobe must be 0 (the collection's setting) or positive")
    if request.ef_search > MAX_EF:
        raise InvalidArgument(f"ef_search={request.ef_search}: at most {MAX_EF}")
    if request.nprobe > max(collection.config.ivfpq.nlist, 1):
        raise InvalidArgument(f"nprobe={request.nprobe}: at most the collection's nlist")
    if queries * request.k > MAX_HITS:
        raise InvalidArgument(
            f"{queries} queries x k={request.k} is more than {MAX_HITS} hits in one response; "
            "send fewer queries per call or ask for fewer results"
        )


def _check_claimed_binding(collection: CollectionStore, model: str, output: str) -> None:
    binding = collection.config.binding
    if (model and model != binding.model) or (output and output != binding.output):
        raise FailedPrecondition(
            f"collection {collection.name!r} holds {_describe(binding)}; the request is "
            f"for model {model or binding.model!r} output {output or binding.output!r}"
        )


def _binding(request: pb2.CreateCollectionRequest, models: ModelRegistry) -> Binding:
    """A served model's output, or (dim alone) the caller's own vectors."""
    if request.dim:
        if request.model or request.version or request.output:
            raise InvalidArgument(
                "give a model (its output fixes the dimension) or dim (a collection of your own vectors), not both"
            )
        if not 1 <= request.dim <= MAX_DIM:
            raise InvalidArgument(f"dim={request.dim}: 1 to {MAX_DIM} values")
        return Binding(dim=request.dim)
    if not request.model:
        raise InvalidArgument(
            "model is empty: name the served model whose embeddings the collection holds, or set dim for a "
            "collection of your own vectors"
        )
    model = models.get(request.model, request.version)
    (output,) = model.check_outputs([request.output or "embedding"])
    return model.binding(output)


def _config(request: pb2.CreateCollectionRequest, binding: Binding) -> CollectionConfig:
    hnsw, ivfpq = request.hnsw, request.ivfpq
    return CollectionConfig(
        name=request.name,
        binding=binding,
        metric=Metric(request.metric),
        index_type=request.index_type,
        hnsw=HnswParams(hnsw.m, hnsw.ef_construction, hnsw.ef_search),
        ivfpq=IvfPqParams(ivfpq.nlist, ivfpq.m, ivfpq.nbits, ivfpq.nprobe, ivfpq.train_size, ivfpq.refine_factor),
        thumbnail_size=_thumbnail_size(request, binding),
    )


def _thumbnail_size(request: pb2.CreateCollectionRequest, binding: Binding) -> int:
    size = request.thumbnail_size
    if size and not MIN_THUMBNAIL <= size <= MAX_THUMBNAIL:
        raise InvalidArgument(f"thumbnail_size={size}: 0 (none) or {MIN_THUMBNAIL} to {MAX_THUMBNAIL} pixels")
    if size and not binding.model:
        raise InvalidArgument("thumbnail_size needs a collection of images (a model); this one holds your vectors")
    return size


def _collection_message(info: CollectionInfo) -> pb2.Collection:
    config = info.config
    return pb2.Collection(
        name=config.name,
        binding=dataclasses.asdict(config.binding),
        metric=f"METRIC_{config.metric.name}",
        index_type=config.index_type,
        hnsw=dataclasses.asdict(config.hnsw),
        ivfpq=dataclasses.asdict(config.ivfpq),
        count=info.count,
        bytes_on_disk=info.bytes_on_disk,
        trained=info.trained,
        whitening_dim=config.whitening_dim,
        thumbnail_size=config.thumbnail_size,
    )


def _describe(binding: Binding) -> str:
    return describe(binding) if binding.model else f"your own {binding.dim}-d vectors (no model)"


def _check_vector(name: str, values, dim: int, item: int | None = None) -> None:
    if len(values) != dim:
        raise InvalidArgument(f"{name} has {len(values)} values; the collection's vectors have {dim}", item)


def _check_item(i: int, item: pb2.Item, dim: int) -> None:
    content = item.WhichOneof("content")
    if content is None:
        raise InvalidArgument(f"item {i} has neither an image nor a vector", item=i)
    if content == "vector":
        _check_vector(f"item {i}'s vector", item.vector.values, dim, i)
    if len(item.id.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(f"item {i}: id is longer than {MAX_ID_BYTES} bytes", item=i)
    if len(item.label.encode()) > MAX_LABEL_BYTES:
        raise InvalidArgument(f"item {i}: label is longer than {MAX_LABEL_BYTES} bytes", item=i)
    if len(item.metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(
            f"item {i} has {len(item.metadata)} metadata entries, more than {MAX_METADATA_ENTRIES}", item=i
        )
    for key, value in item.metadata.items():
        if len(key.encode()) + len(value.encode()) > MAX_METADATA_BYTES:
            raise InvalidArgument(f"item {i}: metadata entry {key[:40]!r} is over {MAX_METADATA_BYTES} bytes", item=i)


def _filter(message: pb2.Filter, collection: CollectionStore) -> Filter:
    """The request's filter, checked: bounded sizes, no empty value lists, known metadata keys."""
    if len(message.labels) > MAX_FILTER_VALUES:
        raise InvalidArgument(f"filter has {len(message.labels)} labels, more than {MAX_FILTER_VALUES}")
    if len(message.metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(f"filter has {len(message.metadata)} metadata keys, more than {MAX_METADATA_ENTRIES}")
    for key, values in message.metadata.items():
        if not 1 <= len(values.values) <= MAX_FILTER_VALUES:
            raise InvalidArgument(f"filter on metadata key {key!r} needs 1 to {MAX_FILTER_VALUES} values")
    where = Filter(
        labels=tuple(message.labels),
        metadata=tuple((key, tuple(message.metadata[key].values)) for key in sorted(message.metadata)),
    )
    collection.check_filter(where)
    return where


def _page_token(last_id: str, listing: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id, "listing": listing}).encode()).decode()


def _after(token: str, listing: str) -> str:
    """The id a page token continues after; InvalidArgument for a token this listing did not hand out."""
    if not token:
        return ""
    try:
        state = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, issued_for = state["after"], state["listing"]
    except (ValueError, TypeError, KeyError) as err:
        raise InvalidArgument("page_token is malformed: pass next_page_token from the previous response") from err
    if issued_for != listing or not isinstance(after, str):
        raise InvalidArgument("page_token belongs to a listing with another filter; start again without it")
    return after


def _stored(row: Row, vector: np.ndarray | None) -> pb2.StoredItem:
    item = pb2.StoredItem(id=row.id, label=row.label, metadata=row.metadata)
    if vector is not None:
        item.vector.CopyFrom(Vector(values=vector.tolist(), dim=len(vector)))
    return item


def _expansion(request, collection: CollectionStore) -> tuple[int, float]:
    """(hits averaged into each query, alpha) of a search's query expansion; (0, _) for none."""
    n = request.query_expansion
    if not 0 <= n <= MAX_EXPANSION:
        raise InvalidArgument(f"query_expansion={n}: 0 (none) to {MAX_EXPANSION} hits")
    alpha = _alpha(request.qe_alpha, "qe_alpha")
    if n and collection.config.metric != Metric.INNER_PRODUCT:
        raise InvalidArgument("query expansion weights hits by similarity: it needs an inner-product collection")
    return n, alpha


def _alpha(value: float, field: str) -> float:
    """The exponent that weights neighbours by similarity (query expansion, augmentation); 0 means the default."""
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise InvalidArgument(f"{field}={value}: 0 to 100 (0 means {DEFAULT_ALPHA:g})")
    return value or DEFAULT_ALPHA
