"""One collection: its items in SQLite (the truth, store.py) and a FAISS index derived from them.

Files in the collection's folder:
- ``items.sqlite3`` (with SQLite's ``-wal`` and ``-shm``): every item and the collection's state;
- ``index-<seq>.faiss``: the FAISS index as of write ``seq``, saved in the background (a temporary file,
  fsynced, renamed; the older one removed). A write never waits for it.

On start the newest index file is loaded and caught up: items written after its ``seq`` are added, and the
FAISS ids it holds whose items are gone (removed or replaced) are dropped (HNSW cannot delete, so they are
filtered from searches). Without a usable index file (missing, unreadable, or older than the last change of
vector space, i.e. whitening) the index is rebuilt from SQLite.

In RAM per collection: the FAISS index (flat and HNSW hold the vectors, 4 x dim bytes each, HNSW adds its
graph; IVF-PQ holds codes), for HNSW the FAISS ids of gone items, and the rows of recent hits (hit_rows.py).
Other labels and metadata, and the float32 vectors that re-ranking, whitening, head training and search by id
need, are read from SQLite.

Writers are serialised by one lock; searches share a readers-writer lock with the brief index mutations only,
so they are not held up by embedding, commits or index training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import threading
import time
import uuid
from collections.abc import Iterator

import faiss
import numpy as np

from offshelf.service.errors import InvalidArgument, NotFound, Unavailable
from offshelf.service.index.config import CollectionConfig, CollectionInfo
from offshelf.service.index.contract import Filter, Hit, Item, Row, StoreBase
from offshelf.service.index.embedded.derived_index import DerivedIndex
from offshelf.service.index.embedded.hit_rows import HitRows
from offshelf.service.index.embedded.rwlock import ReadWriteLock
from offshelf.service.index.embedded.store import DATABASE, ItemStore, from_blobs
from offshelf.service.index.query_expansion import expand
from offshelf.service.index.vectors import Whitening, check_whitening, learn_whitening
from offshelf.service.logs import fields

log = logging.getLogger(__name__)


def fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def folder_bytes(directory: pathlib.Path) -> int:
    """Bytes of the files in the folder; a file the index saver replaces meanwhile counts as absent, and a folder
    deleted meanwhile (the collection with it) holds nothing."""
    try:
        paths = list(directory.iterdir())
    except FileNotFoundError:
        return 0
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:
            pass
    return total


class Collection(StoreBase):
    def __init__(self, directory: pathlib.Path, store: ItemStore, config: CollectionConfig):
        super().__init__(config)
        self.directory = directory
        self.store = store
        self.closed = False
        self._deleted = False
        self.count = 0
        self._seq = 0  # the last committed write
        self._saved_seq = 0  # the write the index file on disk holds
        self._rebuilt_seq = 0  # index files older than this write are in another vector space
        self._next_internal = 0
        self._sum = np.zeros(self.dim, np.float64)  # of the stored vectors: their mean is the drift reference
        self._training = False
        self._derived = DerivedIndex(config, store)  # replaced whole by a rebuild
        self._hit_rows = HitRows(store.rows)
        self._write_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._rw = ReadWriteLock()

    # --- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: pathlib.Path, config: CollectionConfig) -> Collection:
        """Creates the folder whole: built under a hidden name, then renamed."""
        staged = directory.with_name(f".creating-{uuid.uuid4().hex}")
        staged.mkdir(parents=True)
        store = ItemStore(staged / DATABASE)
        with store.transaction() as db:
            ItemStore.set_config(db, config)
        store.close()
        staged.rename(directory)
        fsync_dir(directory.parent)
        return cls(directory, ItemStore(directory / DATABASE), config)

    @classmethod
    def open(cls, directory: pathlib.Path) -> Collection:
        store = ItemStore(directory / DATABASE)
        with store.unreadable_is_a_load_error():
            collection = cls(directory, store, store.config())
            collection._restore()
        collection._maybe_train()
        return collection

    def close(self) -> None:
        """Saves the index, so the next start has nothing to catch up, and closes the database."""
        with self._write_lock:
            if self.closed:
                return
            self.closed = True
        self.save_index()
        self.store.close()

    def delete(self) -> None:
        with self._write_lock:
            self.closed = True
        with self._save_lock:  # a save in progress finishes first; none starts after
            self._deleted = True
            self.store.close()

    # --- reads -----------------------------------------------------------------------------------

    @property
    def unsaved_writes(self) -> int:
        """Writes committed to SQLite that the index file does not hold yet (replayed at start)."""
        return self._seq - self._saved_seq

    def mean(self) -> np.ndarray | None:
        count = self.count
        return self._sum / count if count else None

    def info(self) -> CollectionInfo:
        whitening_dim = 0 if self._derived.whitening is None else self._derived.space_dim
        return CollectionInfo(
            dataclasses.replace(self.config, whitening_dim=whitening_dim),
            self.count,
            folder_bytes(self.directory),
            self._derived.trained,
        )

    def labelled_vectors(self) -> tuple[np.ndarray, list[str]]:
        """The vectors and labels of every labelled item (for training heads)."""
        chunks = list(self.store.scan(self.dim, Filter(labelled=True)))
        if not chunks:
            return np.zeros((0, self.dim), np.float32), []
        return np.concatenate([c[1] for c in chunks]), [label for c in chunks for label in c[2]]

    def stored_vectors(self) -> np.ndarray:
        """Every item's vector as stored, (count, dim)."""
        return np.concatenate([vectors for _, vectors, _ in self.store.scan(self.dim)] or [np.zeros((0, self.dim))])

    def vector_of(self, item_id: str) -> np.ndarray:
        found = self.store.by_ids([item_id], self.dim)
        if item_id not in found:
            raise NotFound(f"collection {self.name!r} has no item {item_id!r}")
        return found[item_id][1]

    def get(self, item_ids: list[str]) -> dict[str, tuple[Row, np.ndarray]]:
        return self.store.by_ids(item_ids, self.dim)

    def page(self, after_id: str, size: int, where: Filter, with_vectors: bool) -> list[tuple[Row, np.ndarray | None]]:
        """Up to `size` items in id order after `after_id`, with their vectors when asked."""
        rows = self.store.page(after_id, size, where, with_vectors)
        vectors = from_blobs([r[4] for r in rows], self.dim) if with_vectors else [None] * len(rows)
        return [(Row(r[0], r[1], r[2], json.loads(r[3])), vector) for r, vector in zip(rows, vectors, strict=True)]

    def check_filter(self, where: Filter) -> None:
        """InvalidArgument for a metadata key that no item of the collection has ever had (a typo, most likely)."""
        if not where.metadata:  # most searches: no query of the keys
            return
        unknown = sorted({key for key, _ in where.metadata} - self.store.metadata_keys())
        if unknown:
            known = ", ".join(sorted(self.store.metadata_keys())) or "none"
            raise InvalidArgument(
                f"filter on metadata key {unknown[0]!r}, which no item of collection {self.name!r} has; "
                f"its keys: {known}"
            )

    def _nearest(self, queries: np.ndarray, k: int, ef_search: int, nprobe: int, where: Filter) -> list[list[Hit]]:
        """One FAISS batch (or an exact scan of the few items `where` selects)."""
        with self._rw.read():
            derived = self._derived
            queries = derived.space(queries)
            if where:
                ranked = derived.search_filtered(queries, k, ef_search, nprobe, where, self.count)
            else:
                ranked = derived.search_all(queries, k, ef_search, nprobe, self.count)
        rows = self._hit_rows.rows(sorted({i for row in ranked for _, i in row}))
        return [
            [(rows[i].id, score, rows[i].label, rows[i].metadata) for score, i in row if i in rows] for row in ranked
        ]

    # --- writes ----------------------------------------------------------------------------------

    def add(self, items: list[Item], vectors: np.ndarray) -> tuple[list[str], int]:
        """Adds items with their prepared vectors; an item whose id exists replaces it (upsert). Durable when
        it returns: acknowledged after its transaction commits. Returns the ids and the count afterwards."""
        with self._write_lock:
            self._check_open()
            return self._write(items, vectors)

    def _write(self, items: list[Item], vectors: np.ndarray) -> tuple[list[str], int]:
        """add() with the write lock held."""
        ids = [item_id or uuid.uuid4().hex for item_id, _, _ in items]
        replaced = self.store.by_ids(ids, self.dim)
        internals = np.arange(self._next_internal, self._next_internal + len(items), dtype=np.int64)
        seq = self._seq + 1
        total = self._sum + vectors.sum(axis=0, dtype=np.float64)
        total -= sum((vector for _, vector in replaced.values()), np.zeros(self.dim))
        rows = [
            (Row(item_id, int(internal), label, meta), vector)
            for item_id, internal, (_, label, meta), vector in zip(ids, internals, items, vectors, strict=True)
        ]
        with self.store.transaction() as db:
            ItemStore.put_items(db, rows, seq, [row.internal for row, _ in replaced.values()])
            self._commit_state(db, seq, int(internals[-1]) + 1, total)
        with self._rw.write():
            self._drop([row.internal for row, _ in replaced.values()])
            self._derived.add(vectors, internals)
            self._seq, self._next_internal, self._sum = seq, int(internals[-1]) + 1, total
            self.count += len(items) - len(replaced)
            count = self.count
        self._after_write()
        return ids, count

    def augment(self, neighbours: int, alpha: float) -> int:
        """Database-side augmentation (DBA; Arandjelović & Zisserman 2012, Radenović et al. 2018): every item's vector
        is replaced by itself plus its `neighbours` nearest items' vectors, each weighted by its similarity^alpha,
        L2-normalised; written like an Add of every item (durable, the labels and metadata kept). Items added later
        are not augmented until it runs again. Returns how many items it rewrote."""
        with self._write_lock:
            self._check_open()
            rows = [row for page in self._all_rows() for row in page]
            if not rows:
                return 0
            ids = [item_id for item_id, _, _, _, _ in rows]
            vectors = np.stack([vector for _, _, _, _, vector in rows]).astype(np.float32)
            id_of = {internal: item_id for item_id, internal, _, _, _ in rows}
            ranked = self._derived.search_all(self._derived.space(vectors), neighbours + 1, 0, 0, self.count)
            hits = [[(id_of[i], score) for score, i in row if i in id_of] for row in ranked]
            stored = dict(zip(ids, vectors, strict=True))
            # each item's own vector expanded with its neighbours': query expansion's arithmetic, on the database
            augmented = expand(vectors, hits, ids, neighbours, alpha, lambda _: stored)
            items = [(item_id, label, json.loads(meta)) for item_id, _, label, meta, _ in rows]
            self._write(items, augmented)
            return len(rows)

    def _all_rows(self, size: int = 4096) -> Iterator[list[tuple]]:
        """Every item, (id, internal, label, metadata JSON, vector) rows, a page at a time."""
        after = ""
        while page := self.store.page(after, size, Filter(), with_vectors=True):
            yield [(r[0], r[1], r[2], r[3], from_blobs([r[4]], self.dim)[0]) for r in page]
            after = page[-1][0]

    def remove(self, item_ids: list[str]) -> tuple[int, list[str], int]:
        """Removes items by id; returns how many were removed, the ids that were not there and the count
        afterwards."""
        wanted = list(dict.fromkeys(item_ids))
        with self._write_lock:
            self._check_open()
            present = self.store.by_ids(wanted, self.dim)
            self._remove(present)
            count = self.count
        return len(present), [i for i in wanted if i not in present], count

    def remove_where(self, where: Filter) -> tuple[int, int]:
        """Removes every item the filter selects, in one write; returns how many, and the count afterwards."""
        with self._write_lock:
            self._check_open()
            present = self.store.by_ids(self.store.ids(where), self.dim)
            self._remove(present)
            count = self.count
        return len(present), count

    def _remove(self, present: dict[str, tuple[Row, np.ndarray]]) -> None:
        if not present:
            return
        seq = self._seq + 1
        total = self._sum - sum((vector for _, vector in present.values()), np.zeros(self.dim))
        with self.store.transaction() as db:
            ItemStore.delete_items(db, [row for row, _ in present.values()])
            self._commit_state(db, seq, self._next_internal, total)
        with self._rw.write():
            self._drop([row.internal for row, _ in present.values()])
            self._seq, self._sum = seq, total
            self.count -= len(present)
        self._after_write()

    def _commit_state(self, db, seq: int, next_internal: int, total: np.ndarray) -> None:
        ItemStore.set_state(db, "seq", seq)
        ItemStore.set_state(db, "next_internal", next_internal)
        ItemStore.set_state(db, "vector_sum", total.astype("<f8").tobytes())

    def train_whitening(self, dim: int, sample: np.ndarray | None = None, source: str = "") -> None:
        """Learns PCA-whitening from the collection's vectors (or from `sample`, the vectors of collection
        `source`) and rebuilds the index (durable on return)."""
        with self._write_lock:
            self._check_open()
            if sample is None:
                dim = check_whitening(dim, self.config, self.count)
                sample = self.stored_vectors()
            else:
                dim = check_whitening(dim, self.config, len(sample), source)
            whitening = learn_whitening(sample, dim)
            seq = self._seq + 1
            with self.store.transaction() as db:
                ItemStore.set_arrays(db, "whitening", {"a": whitening[0], "b": whitening[1]})
                ItemStore.set_state(db, "rebuilt_seq", seq)
                self._commit_state(db, seq, self._next_internal, self._sum)
            self._rebuild(whitening, trained_ivfpq=None)
            self._seq = self._rebuilt_seq = seq
        self.save_index()
        self._maybe_train()

    def _check_open(self) -> None:
        if self.closed:
            raise Unavailable(f"collection {self.name!r} is closing or deleted")

    def _drop(self, internals: list[int]) -> None:
        if not internals:  # most writes replace nothing
            return
        self._hit_rows.forget(internals)
        self._derived.drop(internals)

    def _after_write(self) -> None:
        dead = self._derived.dead  # hnsw: FAISS ids of gone items, filtered from searches
        if dead and len(dead) > max(1000, self.count // 4):
            self._rebuild(self._derived.whitening, None)
        self._maybe_train()

    # --- the derived index -----------------------------------------------------------------------

    def _rebuild(self, whitening: Whitening | None, trained_ivfpq: faiss.Index | None) -> None:
        """Builds a fresh index from SQLite, then swaps it in (searches go on meanwhile). Called with the write
        lock held, so SQLite does not change underneath."""
        derived = DerivedIndex.built(self.config, self.store, whitening, trained_ivfpq)
        with self._rw.write():
            self._derived = derived

    def _restore(self) -> None:
        """Reads the state from SQLite, then loads and catches up the index file (or rebuilds the index)."""
        self._seq = int(self.store.get_state("seq", 0))  # type: ignore[call-overload]
        self._next_internal = int(self.store.get_state("next_internal", 0))  # type: ignore[call-overload]
        self._rebuilt_seq = int(self.store.get_state("rebuilt_seq", 0))  # type: ignore[call-overload]
        total = self.store.get_state("vector_sum")
        if isinstance(total, bytes):
            self._sum = np.frombuffer(total, "<f8").astype(np.float64)
        arrays = self.store.arrays("whitening")
        whitening = (arrays["a"], arrays["b"]) if arrays else None
        self.count = self.store.count()
        files = sorted(self.directory.glob("index-*.faiss"), key=lambda p: int(p.stem.split("-")[1]))
        valid = range(self._rebuilt_seq, self._seq + 1)  # writes since the vector space last changed
        loaded = DerivedIndex.read(self.config, self.store, whitening, files[-1], valid) if files else None
        if loaded is None:
            self._rebuild(whitening, None)
            replayed = self.count
        else:
            self._derived, self._saved_seq = loaded, int(files[-1].stem.split("-")[1])
            self.last_index_save_at = files[-1].stat().st_mtime
            replayed = loaded.catch_up(self._saved_seq)
        log.info(
            "collection restored",
            extra=fields(collection=self.name, items=self.count, seq=self._seq, replayed=replayed),
        )

    def save_index(self) -> None:
        """Writes the index as it is now to index-<seq>.faiss. Writers wait only for the in-memory copy."""
        with self._save_lock:
            with self._rw.read():
                seq = self._seq
                if self._deleted or (seq == self._saved_seq and self.last_index_save_at is not None):
                    return
                data = faiss.serialize_index(self._derived.index)
            path = self.directory / f"index-{seq}.faiss"
            temporary = path.with_name(path.name + ".tmp")
            with open(temporary, "wb") as f:
                data.tofile(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
            fsync_dir(self.directory)
            for older in self.directory.glob("index-*.faiss"):
                if older != path:
                    older.unlink(missing_ok=True)
            self._saved_seq, self.last_index_save_at = seq, time.time()

    def _maybe_train(self) -> None:
        """Starts ivfpq training in the background once the collection holds train_size vectors."""
        if (
            self.config.index_type != "ivfpq"
            or self._derived.trained
            or self._training
            or self.count < self.config.ivfpq.train_size
        ):
            return
        self._training = True
        threading.Thread(target=self._train_ivfpq, name=f"train-{self.name}", daemon=True).start()

    def _train_ivfpq(self) -> None:
        try:
            derived = self._derived
            trained = derived.trained_ivfpq()
            with self._write_lock:
                if self.closed or derived.whitening is not self._derived.whitening:  # whitened meanwhile
                    return
                self._rebuild(derived.whitening, trained)
            self.save_index()
            log.info("ivfpq index trained", extra=fields(collection=self.name, vectors=self.count))
        except Exception:
            log.exception(
                "ivfpq training failed; the collection keeps answering exactly", extra=fields(collection=self.name)
            )
        finally:
            self._training = False
