"""Python SDK: ``Client("host:port").embed(images, model=..., outputs=...)``, and ``AsyncClient`` for asyncio.

Every method of ``Api`` builds its request and says how to read the response; ``Client`` runs the call
and returns the result, ``AsyncClient`` returns an awaitable of the same result. Data come back as
numpy arrays and small dataclasses; descriptions (collections, heads, models) as the API's own typed
protobuf messages, documented in protos/v1.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tqdm import tqdm

from offshelf.clients.connection import Connection
from offshelf.clients.errors import (
    REQUEST_ID_HEADER,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    TrainingFailed,
    from_rpc_error,
)
from offshelf.clients.image_files import (
    AddRun,
    ImageEntry,
    ImageSource,
    SkipReport,
    batches,
    drop_bad_item,
    image_entries,
    read_batch,
    read_image,
    report_skip,
)
from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc, heads_pb2, heads_pb2_grpc, index_pb2, index_pb2_grpc

DEFAULT_MODEL = "efficientnet-lite0"
COUNT_SECONDS = 10.0  # how long copy_collection waits for the copy's count to catch up


METRICS = {"ip": index_pb2.METRIC_INNER_PRODUCT, "l2": index_pb2.METRIC_L2}
AUGMENTATIONS = {
    "none": embedding_pb2.AUGMENTATION_NONE,
    "flip": embedding_pb2.AUGMENTATION_FLIP,
    "10crop": embedding_pb2.AUGMENTATION_TEN_CROP,
}


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    label: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    thumbnail: bytes = b""  # a JPEG, when asked for (with_thumbnails) from a collection that keeps them


@dataclass(frozen=True)
class StoredItem:
    id: str
    label: str
    metadata: dict[str, str]
    vector: np.ndarray | None = None  # as indexed; only when asked for
    thumbnail: bytes = b""  # a JPEG, when asked for (with_thumbnails) from a collection that keeps them


class Label(NamedTuple):
    label: str
    probability: float


def _hits(hits: Iterable[index_pb2.Hit]) -> list[Hit]:
    return [Hit(h.id, h.score, h.label, dict(h.metadata), h.thumbnail) for h in hits]


def _stored(item: index_pb2.StoredItem) -> StoredItem:
    vector = np.array(item.vector.values, np.float32) if item.HasField("vector") else None
    return StoredItem(item.id, item.label, dict(item.metadata), vector, item.thumbnail)


def _filter(labels: Sequence[str], metadata: Mapping[str, str | Sequence[str]] | None) -> index_pb2.Filter:
    """labels and metadata {key: value or values} as the API's Filter."""
    values = {key: [value] if isinstance(value, str) else list(value) for key, value in (metadata or {}).items()}
    return index_pb2.Filter(
        labels=list(labels), metadata={key: index_pb2.Values(values=v) for key, v in values.items()}
    )


def _vector(values: Sequence[float] | np.ndarray) -> embedding_pb2.Vector:
    array = np.asarray(values, np.float32)
    return embedding_pb2.Vector(values=array.tolist(), dim=len(array))


class Api:
    """Every RPC of offshelf.v1 and gRPC health. A failed call raises the OffshelfError subclass of its status
    (offshelf.clients.errors: NotFound, InvalidArgument, ...), a grpc.RpcError carrying the server's status and
    a message that says what to fix."""

    def __init__(
        self,
        address: str | Connection,
        timeout: float = 30.0,
        *,
        aio: bool = False,
        request_id: str | None = None,
        **connection: Any,
    ) -> None:
        """address: host:port, or a Connection. timeout: the deadline of every call, in seconds. request_id: sent
        as x-request-id with every call (the server's log lines about the call carry it); None: the server makes
        one up per call. Either way an error's ``request_id`` says which it was.
        connection: Connection's options (tls, ca_cert, client_cert, client_key, token, retries)."""
        self.connection = address if isinstance(address, Connection) else Connection(address, **connection)
        self.address = self.connection.address
        self.timeout = timeout
        self.request_id = request_id
        self._channel = self.connection.aio_channel() if aio else self.connection.channel()
        # The generated stubs, for requests these methods do not build (tests send malformed ones).
        self.stubs = {
            "embedding": embedding_pb2_grpc.EmbeddingStub(self._channel),
            "index": index_pb2_grpc.IndexStub(self._channel),
            "heads": heads_pb2_grpc.HeadsStub(self._channel),
            "health": health_pb2_grpc.HealthStub(self._channel),
        }

    def _call(self, service: str, method: str, request: Any, parse: Callable[[Any], Any] = lambda r: r) -> Any:
        raise NotImplementedError

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        sent = ((REQUEST_ID_HEADER, self.request_id),) if self.request_id else ()
        return self.connection.metadata() + sent

    def embed(
        self,
        images: Iterable[ImageSource],
        model: str = DEFAULT_MODEL,
        outputs: Iterable[str] = (),
        version: int = 0,
        augmentation: str = "none",
    ) -> dict[str, np.ndarray]:
        """Output name -> float32 array of shape (number of images, dim); all outputs when none are named.

        augmentation: none, flip or 10crop (each output averaged over the image's views).
        """
        outputs = list(outputs)
        request = embedding_pb2.EmbedRequest(
            model=model,
            version=version,
            outputs=outputs,
            images=[read_image(i) for i in images],
            augmentation=AUGMENTATIONS[augmentation],
        )

        def parse(response: embedding_pb2.EmbedResponse) -> dict[str, np.ndarray]:
            names = list(dict.fromkeys(outputs)) or (list(response.results[0].outputs) if response.results else [])
            return {n: np.array([r.outputs[n].values for r in response.results], dtype=np.float32) for n in names}

        return self._call("embedding", "Embed", request, parse)

    def list_models(self) -> list[embedding_pb2.ModelInfo]:
        return self._call("embedding", "ListModels", embedding_pb2.ListModelsRequest(), lambda r: list(r.models))

    # --- collections -------------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        model: str | None = None,
        output: str | None = None,
        version: int = 0,
        metric: str = "ip",
        index_type: str = "flat",
        hnsw: dict[str, int] | None = None,
        ivfpq: dict[str, int] | None = None,
        *,
        dim: int = 0,
        thumbnail_size: int = 0,
    ) -> index_pb2.Collection:
        """A collection bound to a served model's output (model: default efficientnet-lite0, output: default
        "embedding"), or with dim and no model, of your own vectors of dim values (added and searched by vector or
        id). metric: "ip" (inner product on L2-normalised vectors) or "l2"; index_type: flat, hnsw or ivfpq, with
        hnsw={"m", "ef_construction", "ef_search"} or ivfpq={"nlist", "m", "nbits", "nprobe", "train_size",
        "refine_factor"} (unset: the server's defaults). thumbnail_size: keep a JPEG of each image item, at most this
        many pixels on its longer side (16 to 256), for pages that show hits (0: none)."""
        if not dim:
            model, output = model or DEFAULT_MODEL, output or "embedding"
        request = index_pb2.CreateCollectionRequest(
            name=name,
            model=model or "",
            output=output or "",
            dim=dim,
            version=version,
            metric=METRICS[metric],
            index_type=index_type,
            hnsw=index_pb2.HnswParams(**(hnsw or {})),
            ivfpq=index_pb2.IvfPqParams(**(ivfpq or {})),
            thumbnail_size=thumbnail_size,
        )
        return self._call("index", "CreateCollection", request)

    def list_collections(self) -> list[index_pb2.Collection]:
        return self._call("index", "ListCollections", index_pb2.ListCollectionsRequest(), lambda r: list(r.collections))

    def get_collection(self, name: str) -> index_pb2.Collection:
        return self._call("index", "GetCollection", index_pb2.GetCollectionRequest(name=name))

    def delete_collection(self, name: str) -> None:
        return self._call("index", "DeleteCollection", index_pb2.DeleteCollectionRequest(name=name), lambda r: None)

    @staticmethod
    def _add_request(
        collection: str,
        images: Sequence[ImageSource] = (),
        vectors: Sequence[Sequence[float]] = (),
        ids: Sequence[str] = (),
        labels: Sequence[str] = (),
        metadata: Sequence[dict[str, str]] = (),
    ) -> index_pb2.AddRequest:
        contents = [{"image": read_image(i)} for i in images] + [{"vector": _vector(v)} for v in vectors]
        items = [
            index_pb2.Item(
                id=ids[i] if ids else "",
                label=labels[i] if labels else "",
                metadata=metadata[i] if metadata else {},
                **content,
            )
            for i, content in enumerate(contents)
        ]
        return index_pb2.AddRequest(collection=collection, items=items)

    def add(
        self,
        collection: str,
        images: Sequence[ImageSource] = (),
        vectors: Sequence[Sequence[float]] = (),
        ids: Sequence[str] = (),
        labels: Sequence[str] = (),
        metadata: Sequence[dict[str, str]] = (),
    ) -> list[str]:
        """Adds one batch of images or vectors (not both), all or nothing; returns the ids, assigned where none
        was given."""
        request = self._add_request(collection, images, vectors, ids, labels, metadata)
        return self._call("index", "Add", request, lambda r: list(r.ids))

    def add_stream(self, requests: Iterable[index_pb2.AddRequest]) -> list[str]:
        """Adds many batches over one stream (AddStream); each batch is applied whole as it arrives."""
        return self._call("index", "AddStream", iter(requests), lambda r: list(r.ids))

    def _progress_bar(
        self,
        collection: str,
        sources: Iterable[ImageSource],
        progress: bool,
        ids: Sequence[str] | None,
        labels: Sequence[str] | Callable[[pathlib.Path], str] | None,
        id_prefix: str,
    ) -> tqdm:
        """add_images' progress bar. Sources given as a list (not a one-pass iterator) are listed once first, so
        that a missing file or two files with one id are found before anything is sent, and the bar has a total."""
        total = None
        if isinstance(sources, Sequence):
            total = sum(1 for _ in image_entries(sources, ids, labels, id_prefix))
        return tqdm(total=total, unit="img", desc=collection, disable=not progress)

    def remove(
        self,
        collection: str,
        ids: Sequence[str] = (),
        labels: Sequence[str] = (),
        metadata: Mapping[str, str | Sequence[str]] | None = None,
    ) -> index_pb2.RemoveResponse:
        """Removes items by id (the response lists ids that were not there), or every item whose label is one of
        labels and whose metadata matches (each key: a value or a list of accepted values)."""
        request = index_pb2.RemoveRequest(collection=collection, ids=list(ids), filter=_filter(labels, metadata))
        return self._call("index", "Remove", request)

    def get_items(
        self, collection: str, ids: Sequence[str], with_vectors: bool = False, with_thumbnails: bool = False
    ) -> list[StoredItem]:
        """The items with these ids that exist, in the order given."""
        request = index_pb2.GetItemsRequest(
            collection=collection, ids=list(ids), with_vectors=with_vectors, with_thumbnails=with_thumbnails
        )
        return self._call("index", "GetItems", request, lambda r: [_stored(i) for i in r.items])

    def list_items_page(
        self,
        collection: str,
        page_token: str = "",
        page_size: int = 100,
        labels: Sequence[str] = (),
        metadata: Mapping[str, str | Sequence[str]] | None = None,
        with_vectors: bool = False,
        with_thumbnails: bool = False,
    ) -> tuple[list[StoredItem], str]:
        """One page of items in id order, and the token of the next page ("" after the last)."""
        request = index_pb2.ListItemsRequest(
            collection=collection,
            page_token=page_token,
            page_size=page_size,
            filter=_filter(labels, metadata),
            with_vectors=with_vectors,
            with_thumbnails=with_thumbnails,
        )
        return self._call("index", "ListItems", request, lambda r: ([_stored(i) for i in r.items], r.next_page_token))

    def search(
        self,
        collection: str,
        image: ImageSource | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        id: str | None = None,
        k: int = 10,
        flip: bool = False,
        ef_search: int = 0,
        nprobe: int = 0,
        labels: Sequence[str] = (),
        metadata: Mapping[str, str | Sequence[str]] | None = None,
        min_score: float | None = None,
        query_expansion: int = 0,
        qe_alpha: float = 0.0,
        with_thumbnails: bool = False,
    ) -> list[Hit]:
        """The k nearest items to an image, a vector or an indexed item (give exactly one), among the items
        whose label is one of labels and whose metadata matches (each key: a value or a list), scoring at least
        min_score. query_expansion: search again with the query plus its top n hits weighted by score^qe_alpha
        (alpha query expansion; qe_alpha 0: 3). with_thumbnails: each hit's JPEG (collections with thumbnail_size)."""
        request = index_pb2.SearchRequest(
            collection=collection,
            k=k,
            flip=flip,
            ef_search=ef_search,
            nprobe=nprobe,
            filter=_filter(labels, metadata),
            min_score=min_score,
            query_expansion=query_expansion,
            qe_alpha=qe_alpha,
            with_thumbnails=with_thumbnails,
        )
        if image is not None:
            request.image = read_image(image)
        elif vector is not None:
            request.vector.CopyFrom(_vector(vector))
        elif id is not None:
            request.id = id
        return self._call("index", "Search", request, lambda r: _hits(r.hits))

    def search_batch(
        self,
        collection: str,
        images: Sequence[ImageSource] = (),
        vectors: Sequence[Sequence[float]] = (),
        ids: Sequence[str] = (),
        k: int = 10,
        flip: bool = False,
        ef_search: int = 0,
        nprobe: int = 0,
        labels: Sequence[str] = (),
        metadata: Mapping[str, str | Sequence[str]] | None = None,
        min_score: float | None = None,
        query_expansion: int = 0,
        qe_alpha: float = 0.0,
        with_thumbnails: bool = False,
    ) -> list[list[Hit]]:
        """Many queries in one call: the hits of each image, then each vector, then each id (filters and query
        expansion as in search)."""
        queries = (
            [index_pb2.Query(image=read_image(i)) for i in images]
            + [index_pb2.Query(vector=_vector(v)) for v in vectors]
            + [index_pb2.Query(id=i) for i in ids]
        )
        request = index_pb2.SearchBatchRequest(
            collection=collection,
            queries=queries,
            k=k,
            flip=flip,
            ef_search=ef_search,
            nprobe=nprobe,
            filter=_filter(labels, metadata),
            min_score=min_score,
            query_expansion=query_expansion,
            qe_alpha=qe_alpha,
            with_thumbnails=with_thumbnails,
        )
        return self._call("index", "SearchBatch", request, lambda r: [_hits(result.hits) for result in r.results])

    def augment_database(self, collection: str, neighbours: int = 1, alpha: float = 0.0) -> index_pb2.Collection:
        """Database-side augmentation: every item's vector becomes itself plus its `neighbours` nearest items' vectors
        weighted by similarity^alpha (0: 3). Embedded inner-product collections; run it again after adding."""
        request = index_pb2.AugmentDatabaseRequest(collection=collection, neighbours=neighbours, alpha=alpha)
        return self._call("index", "AugmentDatabase", request)

    def train_whitening(self, collection: str, dim: int = 0, learn_from: str = "") -> index_pb2.Collection:
        """Fits PCA-whitening on the collection's vectors, or on those of collection learn_from (an independent set
        of the same model output), and applies it (dim 0: keep every dimension)."""
        request = index_pb2.TrainWhiteningRequest(collection=collection, dim=dim, learn_from=learn_from)
        return self._call("index", "TrainWhitening", request)

    # --- heads -------------------------------------------------------------------------------

    def train_head(
        self,
        name: str,
        kind: str = "logreg",
        collection: str | None = None,
        images: Sequence[ImageSource] = (),
        labels: Sequence[str] = (),
        model: str = DEFAULT_MODEL,
        output: str = "embedding",
        add_classes: bool = False,
    ) -> heads_pb2.HeadJob:
        """Starts training in the server's background from a collection's labelled items or labelled images;
        wait_for_head waits for it."""
        request = heads_pb2.TrainHeadRequest(name=name, kind=kind, add_classes=add_classes)
        if collection is not None:
            request.collection = collection
        else:
            request.images.CopyFrom(
                heads_pb2.LabelledImages(
                    model=model,
                    output=output,
                    images=[
                        heads_pb2.LabelledImage(image=read_image(i), label=label)
                        for i, label in zip(images, labels, strict=True)
                    ],
                )
            )
        return self._call("heads", "TrainHead", request)

    def get_head(self, name: str) -> heads_pb2.Head:
        return self._call("heads", "GetHead", heads_pb2.GetHeadRequest(name=name))

    def wait_for_head(self, name: str, timeout: float = 600.0) -> heads_pb2.Head:
        """Polls GetHead until its latest job has finished. Raises TrainingFailed (with the job's message) if it
        failed, DeadlineExceeded (also a TimeoutError) if it is still training after timeout seconds."""
        deadline = time.monotonic() + timeout
        while not _finished(head := self.get_head(name), name, deadline, timeout):
            time.sleep(0.2)
        return head

    def list_heads(self) -> list[heads_pb2.Head]:
        return self._call("heads", "ListHeads", heads_pb2.ListHeadsRequest(), lambda r: list(r.heads))

    def delete_head(self, name: str) -> None:
        return self._call("heads", "DeleteHead", heads_pb2.DeleteHeadRequest(name=name), lambda r: None)

    def classify(
        self, images: Iterable[ImageSource], head: str, k: int = 5, augmentation: str = "none"
    ) -> list[list[Label]]:
        """Top-k (label, probability) per image, best first; augmentation: none, flip or 10crop."""
        request = heads_pb2.ClassifyRequest(
            head=head, images=[read_image(i) for i in images], k=k, augmentation=AUGMENTATIONS[augmentation]
        )
        return self._call(
            "heads", "Classify", request, lambda r: [[Label(s.label, s.probability) for s in c.top] for c in r.results]
        )

    def health(self, service: str = "") -> str:
        """The health status name: SERVING, NOT_SERVING, ..."""
        return self._call(
            "health",
            "Check",
            health_pb2.HealthCheckRequest(service=service),
            lambda r: health_pb2.HealthCheckResponse.ServingStatus.Name(r.status),
        )


def _check_resumable(source: index_pb2.Collection, there: index_pb2.Collection) -> None:
    """FailedPrecondition unless `there` was made from `source` (the same binding and index settings)."""
    fields = ("binding", "metric", "index_type", "hnsw", "ivfpq")
    differ = [f for f in fields if getattr(source, f) != getattr(there, f)]
    if differ:
        raise FailedPrecondition(
            f"the target already has a collection {there.name!r} with another {', '.join(differ)}: delete it "
            "there, or copy under another name (--as)"
        )


def _same_count(source: index_pb2.Collection, read: Callable[[], index_pb2.Collection]) -> index_pb2.Collection:
    """The copy, once its count equals the source's (a store on Milvus may count recent writes a few seconds late);
    FailedPrecondition if it does not within COUNT_SECONDS."""
    deadline = time.monotonic() + COUNT_SECONDS
    while (copied := read()).count != source.count and time.monotonic() < deadline:
        time.sleep(0.5)
    if copied.count != source.count:
        raise FailedPrecondition(
            f"copied, but {copied.name!r} holds {copied.count} items and the source {source.count}: items were added "
            "to or removed from one of them meanwhile; run the copy again (it sends only what is missing)"
        )
    return copied


def _finished(head: heads_pb2.Head, name: str, deadline: float, timeout: float) -> bool:
    if head.job.state == heads_pb2.JOB_STATE_FAILED:
        raise TrainingFailed(f"training head {name!r} failed: {head.job.message}")
    if head.job.state == heads_pb2.JOB_STATE_SUCCEEDED:
        return True
    if time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"head {name!r} still training after {timeout} s ({head.job.message}); wait longer with a larger timeout"
        )
    return False


class Client(Api):
    """Blocking calls. ``with Client("localhost:50051") as client: client.embed([...])``."""

    def _call(self, service: str, method: str, request: Any, parse: Callable[[Any], Any] = lambda r: r) -> Any:
        stub = getattr(self.stubs[service], method)
        try:
            response = stub(request, timeout=self.timeout, metadata=self._metadata())
        except grpc.RpcError as err:
            raise self.connection.explained(from_rpc_error(err, self.request_id or "")) from err
        return parse(response)

    def add_images(
        self,
        collection: str,
        sources: Iterable[ImageSource],
        ids: Sequence[str] | None = None,
        labels: Sequence[str] | Callable[[pathlib.Path], str] | None = None,
        batch_size: int = 32,
        progress: bool = True,
        *,
        id_prefix: str = "",
        concurrency: int = 4,
        skip_bad: bool = False,
        on_skip: SkipReport = report_skip,
        metadata: Sequence[dict[str, str]] | Callable[[pathlib.Path], dict[str, str]] | None = None,
    ) -> list[str]:
        """Adds many images: files, folders (searched recursively), glob patterns, or encoded bytes.

        Ids: a file's path relative to the folder or the glob's fixed leading folder it was found in, a file
        named directly its file name (image_paths), each after id_prefix; ids, when given, replace these (one
        per image, in order). Adding an id that exists replaces that item, so adding a folder again, however it
        is spelt, changes nothing. labels and metadata: one per image, in order, or a function of each file's path.

        Files are read a batch_size batch at a time, when the batch is sent, with concurrency requests in flight;
        each batch is applied whole or not at all, and is durable once acknowledged. A file that cannot be read,
        or that the server cannot decode, raises an error naming the file (OSError, InvalidArgument); with
        skip_bad it is left out, reported to on_skip(file, message) (default: a line on stderr), and the rest of
        its batch is sent again without it. After an error, the batches in flight finish before it is raised.
        Returns the ids added, in order."""
        chunks = batches(image_entries(sources, ids, labels, id_prefix, metadata), batch_size)
        bar = self._progress_bar(collection, sources, progress, ids, labels, id_prefix)
        with bar, ThreadPoolExecutor(concurrency) as pool:
            run = AddRun(bar, on_skip)
            pending: dict[Future, tuple[int, int]] = {}

            def settle(futures: Iterable[Future]) -> None:
                for future in futures:
                    number, size = pending.pop(future)
                    run.finished(number, size, future.result)

            try:
                for number, batch in enumerate(chunks):
                    pending[pool.submit(self._add_batch, collection, batch, skip_bad)] = (number, len(batch))
                    if len(pending) >= concurrency:  # a free slot before the next batch is even listed
                        settle(wait(pending, return_when=FIRST_COMPLETED).done)
                    if run.error is not None:
                        break
            finally:
                settle(wait(pending).done)
        return run.result()

    def _add_batch(
        self, collection: str, batch: Sequence[ImageEntry], skip_bad: bool
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """One Add of a batch's images (read here), sent again without each item the server refuses (skip_bad):
        the ids added and the files skipped."""
        items, kept, skipped = read_batch(batch, skip_bad)
        while items:
            request = index_pb2.AddRequest(collection=collection, items=items)
            try:
                return self._call("index", "Add", request, lambda r: list(r.ids)), skipped
            except InvalidArgument as err:
                drop_bad_item(err, items, kept, skip_bad, skipped)
        return [], skipped

    def iter_items(
        self,
        collection: str,
        labels: Sequence[str] = (),
        metadata: Mapping[str, str | Sequence[str]] | None = None,
        with_vectors: bool = False,
        page_size: int = 100,
    ) -> Iterator[StoredItem]:
        """Every item (that the filter selects), in id order, fetched a page at a time."""
        token = None
        while token != "":
            items, token = self.list_items_page(collection, token or "", page_size, labels, metadata, with_vectors)
            yield from items

    def copy_collection(
        self, name: str, target: Client, as_name: str = "", batch: int = 500, progress: bool = True
    ) -> index_pb2.Collection:
        """Copies a collection to another server (e.g. from the embedded store to one on Milvus): the same
        binding and index settings, then every item with its id, label, metadata and stored vector, `batch` at
        a time. Running it again completes an interrupted copy: a collection of that name there with the same
        binding and index settings is kept, and only the items it lacks are sent. Returns the collection there;
        FailedPrecondition when its count then differs from the source's (items added or removed meanwhile)."""
        source = self.get_collection(name)
        request = index_pb2.CreateCollectionRequest(
            name=as_name or name,
            model=source.binding.model,
            version=source.binding.version,
            output=source.binding.output,
            dim=0 if source.binding.model else source.binding.dim,  # a collection of the caller's own vectors
            metric=source.metric,
            index_type=source.index_type,
            hnsw=source.hnsw,
            ivfpq=source.ivfpq,
        )
        try:
            created = target._call("index", "CreateCollection", request)
        except AlreadyExists:
            created = target.get_collection(request.name)
            _check_resumable(source, created)
        with tqdm(total=source.count, unit="item", desc=created.name, disable=not progress) as bar:
            page: list[StoredItem] = []
            for item in self.iter_items(name, page_size=batch):
                page.append(item)
                if len(page) == batch:
                    self._copy_missing(name, target, created.name, [i.id for i in page])
                    bar.update(len(page))
                    page = []
            self._copy_missing(name, target, created.name, [i.id for i in page])
            bar.update(len(page))
        return _same_count(source, lambda: target.get_collection(created.name))

    def _copy_missing(self, name: str, target: Client, there: str, ids: list[str]) -> None:
        """Adds to `there` the items of `ids` that it lacks, read with their vectors from collection `name`."""
        present = {item.id for item in target.get_items(there, ids)} if ids else set()
        missing = [i for i in ids if i not in present]
        if missing:
            target._add_items(there, self.get_items(name, missing, with_vectors=True))

    def _add_items(self, collection: str, items: Sequence[StoredItem]) -> list[str]:
        return self.add(
            collection,
            vectors=[cast(Sequence[float], item.vector) for item in items],
            ids=[item.id for item in items],
            labels=[item.label for item in items],
            metadata=[item.metadata for item in items],
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(Api):
    """asyncio calls: the same methods as Client, each returning an awaitable.
    ``async with AsyncClient("localhost:50051") as client: await client.embed([...])``."""

    def __init__(
        self, address: str | Connection, timeout: float = 30.0, *, request_id: str | None = None, **connection: Any
    ) -> None:
        super().__init__(address, timeout, aio=True, request_id=request_id, **connection)

    def _call(
        self, service: str, method: str, request: Any, parse: Callable[[Any], Any] = lambda r: r
    ) -> Awaitable[Any]:
        stub = getattr(self.stubs[service], method)

        async def call() -> Any:
            try:
                response = await stub(request, timeout=self.timeout, metadata=self._metadata())
            except grpc.RpcError as err:
                error = from_rpc_error(err, self.request_id or "")
                raise await asyncio.to_thread(self.connection.explained, error) from err
            return parse(response)

        return call()

    async def add_images(
        self,
        collection: str,
        sources: Iterable[ImageSource],
        ids: Sequence[str] | None = None,
        labels: Sequence[str] | Callable[[pathlib.Path], str] | None = None,
        batch_size: int = 32,
        progress: bool = True,
        *,
        id_prefix: str = "",
        concurrency: int = 4,
        skip_bad: bool = False,
        on_skip: SkipReport = report_skip,
        metadata: Sequence[dict[str, str]] | Callable[[pathlib.Path], dict[str, str]] | None = None,
    ) -> list[str]:
        """As Client.add_images, with concurrency asyncio tasks in flight (files are read in a thread)."""
        chunks = batches(image_entries(sources, ids, labels, id_prefix, metadata), batch_size)
        with self._progress_bar(collection, sources, progress, ids, labels, id_prefix) as bar:
            run = AddRun(bar, on_skip)
            pending: dict[asyncio.Task, tuple[int, int]] = {}

            def settle(tasks: Iterable[asyncio.Task]) -> None:
                for task in tasks:
                    number, size = pending.pop(task)
                    run.finished(number, size, task.result)

            try:
                for number, batch in enumerate(chunks):
                    pending[asyncio.create_task(self._add_batch(collection, batch, skip_bad))] = (number, len(batch))
                    if len(pending) >= concurrency:
                        settle((await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED))[0])
                    if run.error is not None:
                        break
            finally:
                if pending:
                    settle((await asyncio.wait(pending))[0])
        return run.result()

    async def _add_batch(
        self, collection: str, batch: Sequence[ImageEntry], skip_bad: bool
    ) -> tuple[list[str], list[tuple[str, str]]]:
        items, kept, skipped = await asyncio.to_thread(read_batch, batch, skip_bad)
        while items:
            request = index_pb2.AddRequest(collection=collection, items=items)
            try:
                return await self._call("index", "Add", request, lambda r: list(r.ids)), skipped
            except InvalidArgument as err:
                drop_bad_item(err, items, kept, skip_bad, skipped)
        return [], skipped

    async def wait_for_head(self, name: str, timeout: float = 600.0) -> heads_pb2.Head:  # type: ignore[override]
        deadline = time.monotonic() + timeout
        while not _finished(
            head := await cast(Awaitable[heads_pb2.Head], self.get_head(name)), name, deadline, timeout
        ):
            await asyncio.sleep(0.2)
        return head

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
