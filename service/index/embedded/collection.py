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
import pathlib
import threading
import time
import uuid
from collections.abc import Sequence

import faiss
import numpy as np

from offshelf.service.errors import Unavailable
from offshelf.service.index.config import CollectionConfig, CollectionInfo
from offshelf.service.index.contract import Filter, Hit, Item, Row
from offshelf.service.index.embedded.derived_index import DerivedIndex, IvfpqTraining
from offshelf.service.index.embedded.hit_rows import HitRows
from offshelf.service.index.embedded.index_files import (
    folder_bytes,
    fsync_dir,
    write_index_file,
)
from offshelf.service.index.embedded.reads import StoredReads
from offshelf.service.index.embedded.rwlock import ReadWriteLock
from offshelf.service.index.embedded.store import DATABASE, ItemStore, WriteState
from offshelf.service.index.vectors import Whitening, check_whitening, learn_whitening

log = logging.getLogger(__name__)


class Collection(StoredReads):
    def __init__(self, directory: pathlib.Path, store: ItemStore, config: CollectionConfig):
        super().__init__(config)
        self.directory = directory
        self.store = store
        self.closed = False
        self._deleted = False
        self.count = 0
        self._state = WriteState(np.zeros(self.dim, np.float64))
        self._saved_seq = 0  # the write the index file on disk holds
        self._training = IvfpqTraining(config, self._install_trained)
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
        collection._training.maybe_start(collection._derived, collection.count)
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
        return self._state.seq - self._saved_seq

    def mean(self) -> np.ndarray | None:
        count = self.count
        return self._state.vector_sum / count if count else None

    def info(self) -> CollectionInfo:
        whitening_dim = 0 if self._derived.whitening is None else self._derived.space_dim
        return CollectionInfo(
            dataclasses.replace(self.config, whitening_dim=whitening_dim),
            self.count,
            folder_bytes(self.directory),
            self._derived.trained,
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

    def add(self, items: list[Item], vectors: np.ndarray, thumbnails: Sequence[bytes] = ()) -> tuple[list[str], int]:
        """Adds items with their prepared vectors; an item whose id exists replaces it (upsert). Durable when
        it returns: acknowledged after its transaction commits. Returns the ids and the count afterwards."""
        with self._write_lock:
            self._check_open()
            jpegs = (list(thumbnails) or [b""] * len(items)) if self.config.thumbnail_size else None
            return self._write(items, vectors, jpegs)  # None: no thumbnails table work for collections without

    def _write(self, items: list[Item], vectors: np.ndarray, jpegs: Sequence[bytes] | None) -> tuple[list[str], int]:
        """add() with the write lock held; jpegs: the thumbnails (None: the thumbnails table is left as it is)."""
        ids = [item_id or uuid.uuid4().hex for item_id, _, _ in items]
        replaced = self.store.by_ids(ids, self.dim)
        first = self._state.next_internal
        internals = np.arange(first, first + len(items), dtype=np.int64)
        total = self._state.vector_sum + vectors.sum(axis=0, dtype=np.float64)
        total -= sum((vector for _, vector in replaced.values()), np.zeros(self.dim))
        state = self._next_state(total, next_internal=first + len(items))
        rows = [
            (Row(item_id, int(internal), label, meta), vector)
            for item_id, internal, (_, label, meta), vector in zip(ids, internals, items, vectors, strict=True)
        ]
        with self.store.transaction() as db:
            ItemStore.put_items(db, rows, state.seq, [row.internal for row, _ in replaced.values()])
            ItemStore.put_thumbnails(db, ids, jpegs)
            state.commit(db)
        with self._rw.write():
            self._drop([row.internal for row, _ in replaced.values()])
            self._derived.add(vectors, internals)
            self._state = state
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
            rows = [row for page in self.all_rows() for row in page]
            if not rows:
                return 0
            augmented = self._derived.augmented(rows, neighbours, alpha, self.count)
            self._write([(item_id, label, json.loads(meta)) for item_id, _, label, meta, _ in rows], augmented, None)
            return len(rows)

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
        state = self._next_state(
            self._state.vector_sum - sum((vector for _, vector in present.values()), np.zeros(self.dim))
        )
        with self.store.transaction() as db:
            ItemStore.delete_items(db, [row for row, _ in present.values()])
            state.commit(db)
        with self._rw.write():
            self._drop([row.internal for row, _ in present.values()])
            self._state = state
            self.count -= len(present)
        self._after_write()

    def _next_state(self, vector_sum: np.ndarray, **changes: int) -> WriteState:
        return dataclasses.replace(self._state, vector_sum=vector_sum, seq=self._state.seq + 1, **changes)

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
            state = self._next_state(self._state.vector_sum, rebuilt_seq=self._state.seq + 1)
            with self.store.transaction() as db:
                ItemStore.set_arrays(db, "whitening", {"a": whitening[0], "b": whitening[1]})
                state.commit(db)
            self._rebuild(whitening, trained_ivfpq=None)
            self._state = state
        self.save_index()
        self._training.maybe_start(self._derived, self.count)

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
        self._training.maybe_start(self._derived, self.count)

    # --- the derived index -----------------------------------------------------------------------

    def _rebuild(self, whitening: Whitening | None, trained_ivfpq: faiss.Index | None) -> None:
        """Builds a fresh index from SQLite, then swaps it in (searches go on meanwhile). Called with the write
        lock held, so SQLite does not change underneath."""
        derived = DerivedIndex.built(self.config, self.store, whitening, trained_ivfpq)
        with self._rw.write():
            self._derived = derived

    def _restore(self) -> None:
        """Reads the state from SQLite, then loads and catches up the index file (or rebuilds the index)."""
        self._state = state = WriteState.read(self.store, self.dim)
        self.count = self.store.count()
        valid = range(state.rebuilt_seq, state.seq + 1)  # writes since the vector space last changed
        restored = DerivedIndex.restored(self.config, self.store, self.directory, valid)
        self._derived, self._saved_seq, self.last_index_save_at = restored

    def save_index(self) -> None:
        """Writes the index as it is now to index-<seq>.faiss. Writers wait only for the in-memory copy."""
        with self._save_lock:
            with self._rw.read():
                seq = self._state.seq
                if self._deleted or (seq == self._saved_seq and self.last_index_save_at is not None):
                    return
                data = faiss.serialize_index(self._derived.index)
            write_index_file(self.directory, seq, data)
            self._saved_seq, self.last_index_save_at = seq, time.time()

    def _install_trained(self, derived: DerivedIndex, trained: faiss.Index) -> bool:
        with self._write_lock:
            if self.closed or derived.whitening is not self._derived.whitening:  # whitened meanwhile
                return False
            self._rebuild(derived.whitening, trained)
        self.save_index()
        return True
