"""The collection store's contract: the value types both stores speak, the calls every collection and every
registry of collections answers (CollectionStore, CollectionCatalog), and what both do alike (StoreBase).

Two stores implement it: embedded/ (one SQLite database per collection, the truth, and a FAISS index derived from
it) and milvus/ (one Milvus table per collection generation, shared by every replica). Callers (the doors, heads,
metrics) see only this module's names; tests/test_store_contract.py runs the same cases against both."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from offshelf.service.drift import DriftMonitor
from offshelf.service.errors import InvalidArgument, NotFound
from offshelf.service.index.config import CollectionConfig, CollectionInfo, Metric
from offshelf.service.index.query_expansion import DEFAULT_ALPHA, expand
from offshelf.service.index.vectors import prepare

Item = tuple[str, str, dict[str, str]]  # (id, label, metadata) of an item to add
Hit = tuple[str, float, str, dict[str, str]]  # (id, score, label, metadata) of a search hit


@dataclass(frozen=True)
class Row:
    """A stored item without its vector; internal: the embedded store's FAISS id (0 on Milvus)."""

    id: str
    internal: int
    label: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class Filter:
    """Items whose label is one of `labels` (when given) and whose metadata[key] is one of the values for each
    key in `metadata`. An empty filter selects every item."""

    labels: tuple[str, ...] = ()
    metadata: tuple[tuple[str, tuple[str, ...]], ...] = ()
    labelled: bool = False  # only items with a label

    def __bool__(self) -> bool:
        return bool(self.labels or self.metadata or self.labelled)


class CollectionStore(Protocol):
    """One collection, on either store. Vectors given to add() and search() are as the caller computed them;
    the store prepares them (normalisation, whitening) itself. thumbnails: a JPEG per item added (b"": none; an
    item replaced without one loses the old one), kept apart from the items and removed with them."""

    name: str
    dim: int
    config: CollectionConfig
    drift: DriftMonitor
    last_index_save_at: float | None

    @property
    def unsaved_writes(self) -> int:
        """Writes the store holds that its derived index file does not yet (0 on Milvus)."""

    def close(self) -> None: ...
    def info(self) -> CollectionInfo: ...
    def mean(self) -> np.ndarray | None: ...
    def labelled_vectors(self) -> tuple[np.ndarray, list[str]]: ...
    def stored_vectors(self) -> np.ndarray: ...
    def vector_of(self, item_id: str) -> np.ndarray: ...
    def get(self, item_ids: list[str]) -> dict[str, tuple[Row, np.ndarray]]: ...
    def page(
        self, after_id: str, size: int, where: Filter, with_vectors: bool
    ) -> list[tuple[Row, np.ndarray | None]]: ...
    def check_filter(self, where: Filter) -> None: ...
    def search(
        self,
        queries: np.ndarray,
        k: int,
        ef_search: int = 0,
        nprobe: int = 0,
        where: Filter | None = None,
        min_score: float | None = None,
        expansion: int = 0,
        alpha: float = DEFAULT_ALPHA,
        own_ids: Sequence[str | None] = (),
    ) -> list[list[Hit]]: ...
    def prepare(self, vectors: np.ndarray) -> np.ndarray: ...
    def add(
        self, items: list[Item], vectors: np.ndarray, thumbnails: Sequence[bytes] = ()
    ) -> tuple[list[str], int]: ...
    def thumbnails(self, item_ids: list[str]) -> dict[str, bytes]: ...
    def remove(self, item_ids: list[str]) -> tuple[int, list[str], int]: ...
    def remove_where(self, where: Filter) -> tuple[int, int]: ...
    def augment(self, neighbours: int, alpha: float) -> int: ...
    def train_whitening(self, dim: int, sample: np.ndarray | None = None, source: str = "") -> None: ...


class CollectionCatalog(Protocol):
    """Every collection of one store: restored at start, created, looked up (NotFound names the fix), deleted.
    watch: on_change(reachable) when the store stops or starts answering (the embedded store always answers)."""

    def load_all(self) -> None: ...
    def create(self, config: CollectionConfig) -> CollectionStore: ...
    def get(self, name: str) -> CollectionStore: ...
    def all(self) -> Sequence[CollectionStore]: ...
    def delete(self, name: str) -> None: ...
    def close(self) -> None: ...


class StoreBase(ABC):
    """What both stores do alike: their configuration, drift monitor, vector preparation, and a search around
    each store's nearest-neighbour lookup (vectors prepared and observed for drift, query expansion, hits under
    min_score dropped)."""

    def __init__(self, config: CollectionConfig):
        self.config = config
        self.name = config.name
        self.dim = config.binding.dim
        self.drift = DriftMonitor()
        self.last_index_save_at: float | None = None  # Unix time

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        return prepare(vectors, self.config)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        ef_search: int = 0,
        nprobe: int = 0,
        where: Filter | None = None,
        min_score: float | None = None,
        expansion: int = 0,
        alpha: float = DEFAULT_ALPHA,
        own_ids: Sequence[str | None] = (),
    ) -> list[list[Hit]]:
        """The k nearest items to each query vector, among those `where` selects, best first. With `expansion`,
        each query is searched again expanded by its first `expansion` hits (alpha query expansion); own_ids: the
        item each query is (a search by id), left out of its expansion."""
        if min_score is not None and self.config.metric != Metric.INNER_PRODUCT:
            raise InvalidArgument("min_score applies to inner-product collections (scores are similarities)")
        queries = self.prepare(queries)
        self.drift.observe(queries)
        where = where or Filter()
        if expansion:
            first = self._nearest(queries, expansion + 1, ef_search, nprobe, where)
            queries = expand(
                queries,
                [[(item_id, score) for item_id, score, _, _ in row] for row in first],
                own_ids or [None] * len(queries),
                expansion,
                alpha,
                lambda ids: {item_id: vector for item_id, (_, vector) in self.get(ids).items()},
            )
        answers = self._nearest(queries, k, ef_search, nprobe, where)
        if min_score is None:
            return answers
        return [[hit for hit in row if hit[1] >= min_score] for row in answers]

    def vector_of(self, item_id: str) -> np.ndarray:
        found = self.get([item_id])
        if item_id not in found:
            raise NotFound(f"collection {self.name!r} has no item {item_id!r}")
        return found[item_id][1]

    @abstractmethod
    def get(self, item_ids: list[str]) -> dict[str, tuple[Row, np.ndarray]]:
        """The stored rows and vectors (as added) of the ids found."""

    @abstractmethod
    def _nearest(self, queries: np.ndarray, k: int, ef_search: int, nprobe: int, where: Filter) -> list[list[Hit]]:
        """The k nearest items to each prepared query, best first."""
