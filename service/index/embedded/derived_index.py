"""A collection's FAISS index, derived from its SQLite store: built from it, read back from an index file and caught
up with it, and searched (all items, the items a filter selects, exactly when they are few, and IVF-PQ's candidates
re-ranked by their exact scores from SQLite).

It holds the vectors in the collection's index space (whitened when the collection is) and, for HNSW, which cannot
delete, the FAISS ids of gone items, filtered from searches. It takes no lock: its collection holds a
readers-writer lock, shared to search it and alone to change or replace it."""

from __future__ import annotations

import logging
import pathlib
import threading
from collections.abc import Callable

import faiss
import numpy as np

from offshelf.service.index.config import CollectionConfig, Metric
from offshelf.service.index.contract import Filter
from offshelf.service.index.embedded.faiss_index import new_index, search_params, train_ivfpq
from offshelf.service.index.embedded.index_files import file_seq, newest_index_file
from offshelf.service.index.embedded.store import ItemStore
from offshelf.service.index.query_expansion import expand
from offshelf.service.index.vectors import Whitening, to_index_space
from offshelf.service.logs import fields

log = logging.getLogger(__name__)
EXACT_FILTER_LIMIT = 4096  # a filter selecting at most this many items is searched exactly
Ranked = list[list[tuple[float, int]]]  # per query, (score, FAISS id) best first


def space_dim(config: CollectionConfig, whitening: Whitening | None) -> int:
    """The dimension of the index's vectors: the whitening's output, else the binding's."""
    return config.binding.dim if whitening is None else len(whitening[1])


class DerivedIndex:
    def __init__(
        self,
        config: CollectionConfig,
        store: ItemStore,
        index: faiss.Index | None = None,
        whitening: Whitening | None = None,
    ):
        self.config, self.store, self.dim = config, store, config.binding.dim
        self.whitening = whitening
        self.index = index if index is not None else new_index(config, self.space_dim)
        self.dead: set[int] = set()
        self._dead_selector: tuple[faiss.IDSelector, ...] | None = None

    @property
    def trained(self) -> bool:
        """Whether it is a trained IVF-PQ index (untrained, an ivfpq collection is flat and exact)."""
        return isinstance(self.index, faiss.IndexIVF)

    @property
    def space_dim(self) -> int:
        return space_dim(self.config, self.whitening)

    @classmethod
    def built(
        cls,
        config: CollectionConfig,
        store: ItemStore,
        whitening: Whitening | None,
        trained_ivfpq: faiss.Index | None = None,
    ) -> DerivedIndex:
        """A fresh index of every item in the store, added a chunk at a time."""
        derived = cls(config, store, new_index(config, space_dim(config, whitening), trained_ivfpq), whitening)
        for internals, vectors, _ in store.scan(derived.dim):
            derived.add(vectors, internals)
        return derived

    @classmethod
    def restored(
        cls, config: CollectionConfig, store: ItemStore, directory: pathlib.Path, valid: range
    ) -> tuple[DerivedIndex, int, float | None]:
        """The index of the newest index file in `directory` caught up with the store, or, without a usable one,
        rebuilt from the store; with the write that file held and its time (0 and None when rebuilt)."""
        arrays = store.arrays("whitening")
        whitening = (arrays["a"], arrays["b"]) if arrays else None
        newest = newest_index_file(directory)
        derived = cls.read(config, store, whitening, newest, valid) if newest else None
        items = store.count()
        if newest is None or derived is None:
            derived, saved_seq, saved_at, replayed = cls.built(config, store, whitening), 0, None, items
        else:
            saved_seq, saved_at = file_seq(newest), newest.stat().st_mtime
            replayed = derived.catch_up(saved_seq)
        log.info(
            "collection restored", extra=fields(collection=config.name, items=items, seq=valid[-1], replayed=replayed)
        )
        return derived, saved_seq, saved_at

    @classmethod
    def read(
        cls,
        config: CollectionConfig,
        store: ItemStore,
        whitening: Whitening | None,
        path: pathlib.Path,
        valid: range,
    ) -> DerivedIndex | None:
        """The index saved in `path` (index-<seq>.faiss), if it is readable, of a write in `valid` and in today's
        vector space; None (logged) when it must be rebuilt."""
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            log.warning("unreadable index file: rebuilding it", extra=fields(path=str(path), error=str(err)))
            return None
        derived = cls(config, store, index, whitening)
        if file_seq(path) not in valid or index.d != derived.space_dim:
            log.warning("stale index file: rebuilding it", extra=fields(path=str(path)))
            return None
        return derived

    def catch_up(self, after_seq: int) -> int:
        """Drops the items gone from the store and adds those written after write `after_seq`; returns how many
        were added."""
        live = self.store.internals()
        if self.config.index_type == "hnsw":
            held = faiss.vector_to_array(self.index.id_map)  # type: ignore[attr-defined]  # an IndexIDMap2
            self.drop(np.setdiff1d(held, live, assume_unique=True).tolist())
        else:
            self.index.remove_ids(faiss.IDSelectorNot(faiss.IDSelectorBatch(live)))
        added = 0
        for internals, vectors, _ in self.store.scan(self.dim, after_seq=after_seq):
            self.add(vectors, internals)
            added += len(internals)
        return added

    def trained_ivfpq(self) -> faiss.Index:
        """An IVF-PQ index trained on every stored vector in this index's space (slow: run off the write path)."""
        sample = np.concatenate([self.space(vectors) for _, vectors, _ in self.store.scan(self.dim)])
        return train_ivfpq(self.config, sample)

    # --- changes (the collection's write lock held, and its readers-writer lock alone) ----------------

    def space(self, vectors: np.ndarray) -> np.ndarray:
        """Stored vectors as this index holds them."""
        return to_index_space(vectors, self.whitening, self.config)

    def add(self, vectors: np.ndarray, internals: np.ndarray) -> None:
        self.index.add_with_ids(self.space(vectors), internals)

    def drop(self, internals: list[int]) -> None:
        if not internals:
            return
        if self.config.index_type == "hnsw":
            self.dead.update(internals)
            batch = faiss.IDSelectorBatch(np.fromiter(self.dead, np.int64, len(self.dead)))
            self._dead_selector = (batch, faiss.IDSelectorNot(batch))
        else:
            self.index.remove_ids(np.asarray(internals, np.int64))  # type: ignore[arg-type]  # faiss wraps arrays

    # --- searches (the readers-writer lock shared) ------------------------------------------------------

    def search_all(self, queries: np.ndarray, k: int, ef_search: int, nprobe: int, count: int) -> Ranked:
        """The k best of the `count` items for each query (in this index's space)."""
        if not count:
            return [[] for _ in queries]
        selector = self._dead_selector[-1] if self._dead_selector else None
        params = search_params(self.config, self.trained, ef_search, nprobe, selector)
        refine = self.config.ivfpq.refine_factor if self.trained else 1
        scores, internals = self.index.search(queries, min(k * refine, count), params=params)
        ranked = [
            [(float(s), i) for s, i in zip(row_scores, row_internals, strict=True) if i >= 0]
            for row_scores, row_internals in zip(scores, internals.tolist(), strict=True)
        ]
        if refine > 1:
            return [
                self.exact(query[None], [i for _, i in row], k)[0] for query, row in zip(queries, ranked, strict=True)
            ]
        return [row[:k] for row in ranked]

    def search_filtered(
        self, queries: np.ndarray, k: int, ef_search: int, nprobe: int, where: Filter, count: int
    ) -> Ranked:
        """Exact over the selected items when they are few; else FAISS restricted to them, falling back to
        exact for a query that gets fewer than k hits while k are selected (a filtered HNSW graph can)."""
        allowed = self.store.internals(where)
        if len(allowed) == count:
            return self.search_all(queries, k, ef_search, nprobe, count)
        if len(allowed) <= EXACT_FILTER_LIMIT or self.config.index_type == "ivfpq":
            return self.exact(queries, allowed.tolist(), k)
        selector = faiss.IDSelectorBatch(allowed)
        params = search_params(self.config, self.trained, max(ef_search, k), nprobe, selector)
        scores, internals = self.index.search(queries, k, params=params)
        results = []
        for query, row_scores, row_internals in zip(queries, scores, internals.tolist(), strict=True):
            row = [(float(s), i) for s, i in zip(row_scores, row_internals, strict=True) if i >= 0]
            results.append(row if len(row) >= min(k, len(allowed)) else self.exact(query[None], allowed.tolist(), k)[0])
        return results

    def exact(self, queries: np.ndarray, candidates: list[int], k: int) -> Ranked:
        """The k best candidates for each query by exact score, their vectors read from SQLite once (IVF-PQ holds
        only codes)."""
        found = self.store.vectors(candidates, self.dim)
        if not found:
            return [[] for _ in queries]
        internals = list(found)
        exact = self.space(np.stack([found[i] for i in internals]))
        if self.config.metric == Metric.L2:
            scores = (queries**2).sum(axis=1)[:, None] - 2 * queries @ exact.T + (exact**2).sum(axis=1)[None]
            orders = np.argsort(scores, axis=1, kind="stable")[:, :k]
        else:
            scores = queries @ exact.T
            orders = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[(float(row[j]), internals[j]) for j in order] for row, order in zip(scores, orders, strict=True)]

    def augmented(self, rows: list[tuple], neighbours: int, alpha: float, count: int) -> np.ndarray:
        """Database-side augmentation's vectors for (id, internal, label, metadata, vector) rows: each item's own
        vector expanded with its neighbours' in this index (query expansion's arithmetic, on the database)."""
        ids = [item_id for item_id, _, _, _, _ in rows]
        vectors = np.stack([vector for _, _, _, _, vector in rows]).astype(np.float32)
        id_of = {internal: item_id for item_id, internal, _, _, _ in rows}
        ranked = self.search_all(self.space(vectors), neighbours + 1, 0, 0, count)
        hits = [[(id_of[i], score) for score, i in row if i in id_of] for row in ranked]
        stored = dict(zip(ids, vectors, strict=True))
        return expand(vectors, hits, ids, neighbours, alpha, lambda _: stored)


class IvfpqTraining:
    """Trains an ivfpq collection's IVF-PQ index in a background thread once the collection holds train_size vectors
    (until then it is flat and exact). `install` swaps the trained index in, or refuses it (False) when the
    collection closed or changed vector space meanwhile."""

    def __init__(self, config: CollectionConfig, install: Callable[[DerivedIndex, faiss.Index], bool]):
        self.config, self.install = config, install
        self.running = False

    def maybe_start(self, derived: DerivedIndex, count: int) -> None:
        ivfpq = self.config.ivfpq
        if self.config.index_type != "ivfpq" or derived.trained or self.running or count < ivfpq.train_size:
            return
        self.running = True
        name = f"train-{self.config.name}"
        threading.Thread(target=self._train, args=(derived, count), name=name, daemon=True).start()

    def _train(self, derived: DerivedIndex, count: int) -> None:
        try:
            if self.install(derived, derived.trained_ivfpq()):
                log.info("ivfpq index trained", extra=fields(collection=self.config.name, vectors=count))
        except Exception:
            log.exception(
                "ivfpq training failed; the collection keeps answering exactly",
                extra=fields(collection=self.config.name),
            )
        finally:
            self.running = False
