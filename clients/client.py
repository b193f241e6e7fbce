"""Python SDK: ``Client("host:port").embed(images, model=..., outputs=...)``."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tqdm import tqdm

from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc, heads_pb2, heads_pb2_grpc, index_pb2, index_pb2_grpc

ImageSource = str | os.PathLike[str] | bytes
DEFAULT_MODEL = "efficientnet-lite0"
MAX_MESSAGE_BYTES = 64 << 20


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


def read_image(image: ImageSource) -> bytes:
    return image if isinstance(image, bytes) else pathlib.Path(image).read_bytes()


class Client:
    """A connection to an offshelf server. Calls raise grpc.RpcError with the server's status and message."""

    def __init__(self, address: str, timeout: float = 30.0):
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._embedding = embedding_pb2_grpc.EmbeddingStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._index = index_pb2_grpc.IndexStub(self._channel)
        self._heads = heads_pb2_grpc.HeadsStub(self._channel)

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
        response = self._embedding.Embed(request, timeout=self.timeout)
        names = list(dict.fromkeys(outputs)) or (list(response.results[0].outputs) if response.results else [])
        return {name: np.array([r.outputs[name].values for r in response.results], dtype=np.float32) for name in names}

    def list_models(self) -> list[embedding_pb2.ModelInfo]:
        return list(self._embedding.ListModels(embedding_pb2.ListModelsRequest(), timeout=self.timeout).models)

    # --- collections -------------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        model: str = DEFAULT_MODEL,
        output: str = "embedding",
        version: int = 0,
        metric: str = "ip",
        index_type: str = "flat",
        hnsw: dict[str, int] | None = None,
        ivfpq: dict[str, int] | None = None,
    ) -> index_pb2.Collection:
        """metric: "ip" (inner product on L2-normalised vectors) or "l2"; index_type: flat, hnsw or ivfpq."""
        request = index_pb2.CreateCollectionRequest(
            name=name,
            model=model,
            output=output,
            version=version,
            metric=METRICS[metric],
            index_type=index_type,
            hnsw=index_pb2.HnswParams(**(hnsw or {})),
            ivfpq=index_pb2.IvfPqParams(**(ivfpq or {})),
        )
        return self._index.CreateCollection(request, timeout=self.timeout)

    def list_collections(self) -> list[index_pb2.Collection]:
        return list(self._index.ListCollections(index_pb2.ListCollectionsRequest(), timeout=self.timeout).collections)

    def get_collection(self, name: str) -> index_pb2.Collection:
        return self._index.GetCollection(index_pb2.GetCollectionRequest(name=name), timeout=self.timeout)

    def delete_collection(self, name: str) -> None:
        self._index.DeleteCollection(index_pb2.DeleteCollectionRequest(name=name), timeout=self.timeout)

    def add(
        self,
        collection: str,
        images: Sequence[ImageSource] = (),
        vectors: Sequence[Sequence[float]] = (),
        ids: Sequence[str] = (),
        labels: Sequence[str] = (),
        metadata: Sequence[dict[str, str]] = (),
    ) -> list[str]:
        """Adds one batch of images or vectors (not both); returns the ids, assigned where none was given."""
        contents = [{"image": read_image(i)} for i in images] + [
            {"vector": embedding_pb2.Vector(values=np.asarray(v, np.float32).tolist(), dim=len(v))} for v in vectors
        ]
        items = [
            index_pb2.Item(
                id=ids[i] if ids else "",
                label=labels[i] if labels else "",
                metadata=metadata[i] if metadata else {},
                **content,
            )
            for i, content in enumerate(contents)
        ]
        response = self._index.Add(index_pb2.AddRequest(collection=collection, items=items), timeout=self.timeout)
        return list(response.ids)

    def add_images(
        self,
        collection: str,
        paths: Sequence[ImageSource],
        ids: Sequence[str] = (),
        labels: Sequence[str] = (),
        batch_size: int = 32,
        progress: bool = True,
    ) -> list[str]:
        """Adds many images in batches, with a progress bar."""
        added: list[str] = []
        with tqdm(total=len(paths), unit="img", desc=f"indexing into {collection}", disable=not progress) as bar:
            for start in range(0, len(paths), batch_size):
                end = start + batch_size
                added += self.add(collection, images=paths[start:end], ids=ids[start:end], labels=labels[start:end])
                bar.update(len(paths[start:end]))
        return added

    def remove(self, collection: str, ids: Sequence[str]) -> index_pb2.RemoveResponse:
        return self._index.Remove(index_pb2.RemoveRequest(collection=collection, ids=list(ids)), timeout=self.timeout)

    def search(
        self,
        collection: str,
        image: ImageSource | None = None,
        vector: Sequence[float] | None = None,
        id: str | None = None,
        k: int = 10,
        flip: bool = False,
        ef_search: int = 0,
        nprobe: int = 0,
    ) -> list[Hit]:
        """The k nearest items to an image, a vector or an indexed item (give exactly one)."""
        request = index_pb2.SearchRequest(collection=collection, k=k, flip=flip, ef_search=ef_search, nprobe=nprobe)
        if image is not None:
            request.image = read_image(image)
        elif vector is not None:
            request.vector.values[:] = np.asarray(vector, np.float32).tolist()
            request.vector.dim = len(vector)
        elif id is not None:
            request.id = id
        response = self._index.Search(request, timeout=self.timeout)
        return [Hit(h.id, h.score, h.label, dict(h.metadata)) for h in response.hits]

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
    ) -> list[list[Hit]]:
        """Many queries in one call: the hits of each image, then each vector, then each id."""
        queries = (
            [index_pb2.Query(image=read_image(i)) for i in images]
            + [
                index_pb2.Query(vector=embedding_pb2.Vector(values=np.asarray(v, np.float32).tolist(), dim=len(v)))
                for v in vectors
            ]
            + [index_pb2.Query(id=i) for i in ids]
        )
        request = index_pb2.SearchBatchRequest(
            collection=collection, queries=queries, k=k, flip=flip, ef_search=ef_search, nprobe=nprobe
        )
        response = self._index.SearchBatch(request, timeout=self.timeout)
        return [[Hit(h.id, h.score, h.label, dict(h.metadata)) for h in r.hits] for r in response.results]

    def train_whitening(self, collection: str, dim: int = 0) -> index_pb2.Collection:
        request = index_pb2.TrainWhiteningRequest(collection=collection, dim=dim)
        return self._index.TrainWhitening(request, timeout=self.timeout)

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
        """Starts training in the server's background from a collection's labelled items or labelled images."""
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
        return self._heads.TrainHead(request, timeout=self.timeout)

    def get_head(self, name: str) -> heads_pb2.Head:
        return self._heads.GetHead(heads_pb2.GetHeadRequest(name=name), timeout=self.timeout)

    def wait_for_head(self, name: str, timeout: float = 600.0) -> heads_pb2.Head:
        """Polls GetHead until its latest job has finished; raises RuntimeError if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            head = self.get_head(name)
            if head.job.state == heads_pb2.JOB_STATE_FAILED:
                raise RuntimeError(f"training head {name!r} failed: {head.job.message}")
            if head.job.state == heads_pb2.JOB_STATE_SUCCEEDED:
                return head
            if time.monotonic() > deadline:
                raise TimeoutError(f"head {name!r} still training after {timeout} s: {head.job.message}")
            time.sleep(0.2)

    def list_heads(self) -> list[heads_pb2.Head]:
        return list(self._heads.ListHeads(heads_pb2.ListHeadsRequest(), timeout=self.timeout).heads)

    def delete_head(self, name: str) -> None:
        self._heads.DeleteHead(heads_pb2.DeleteHeadRequest(name=name), timeout=self.timeout)

    def classify(
        self, images: Iterable[ImageSource], head: str, k: int = 5, augmentation: str = "none"
    ) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) per image; augmentation: none, flip or 10crop."""
        request = heads_pb2.ClassifyRequest(
            head=head, images=[read_image(i) for i in images], k=k, augmentation=AUGMENTATIONS[augmentation]
        )
        response = self._heads.Classify(request, timeout=self.timeout)
        return [[(s.label, s.probability) for s in r.top] for r in response.results]

    def health(self, service: str = "") -> str:
        """The health status name: SERVING, NOT_SERVING, ..."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
