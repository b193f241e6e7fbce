"""One collection: items (id, label, metadata, vector) and a FAISS index over them, durable on disk.

Files in the collection's folder:
- ``collection.json``: configuration and binding (an ``offshelf.v1.Collection``), written once;
- ``snapshot.npz``: the whole state as of write sequence number ``seq`` (written to a temporary
  file, fsynced, renamed);
- ``wal.log``: every acknowledged write after that snapshot, appended and fsynced before the
  acknowledgement, emptied after each snapshot.

Recovery loads the snapshot and replays the log; the sequence numbers must follow on without a
gap, so a lost or mismatched file is refused rather than yielding a silently different index.
Writers are serialised by one lock; searches share a readers-writer lock with the brief index
mutations only, so they are not held up by embedding, fsync or index training.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import struct
import threading
import time
import uuid
import zipfile
from typing import Any

import faiss
import numpy as np
from google.protobuf import json_format

from offshelf.protos.v1 import index_pb2
from offshelf.service.drift import DriftMonitor
from offshelf.service.errors import CollectionLoadError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from offshelf.service.index.faiss_index import new_index, search_params, train_ivfpq
from offshelf.service.index.rwlock import ReadWriteLock
from offshelf.service.index.wal import CorruptLog, WriteAheadLog, fsync_dir
from offshelf.service.logs import fields

log = logging.getLogger(__name__)
CONFIG, SNAPSHOT, WAL = "collection.json", "snapshot.npz", "wal.log"
Item = tuple[str, str, dict[str, str]]  # (id, label, metadata)
Hit = tuple[str, float, str, dict[str, str]]  # (id, score, label, metadata)


def write_atomically(path: pathlib.Path, write) -> None:
    """Writes via a temporary file that is fsynced and renamed over path."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _encode(header: dict, vectors: np.ndarray | None = None) -> bytes:
    head = json.dumps(header).encode()
    body = b"" if vectors is None else np.ascontiguousarray(vectors, "<f4").tobytes()
    return struct.pack("<I", len(head)) + head + body


def _decode(payload: bytes, dim: int) -> tuple[dict, np.ndarray]:
    (length,) = struct.unpack_from("<I", payload)
    header = json.loads(payload[4 : 4 + length])
    return header, np.frombuffer(payload[4 + length :], "<f4").reshape(-1, dim).copy()


class Collection:
    def __init__(self, directory: pathlib.Path, config: index_pb2.Collection, snapshot_every: int):
        self.directory = directory
        self.config = config
        self.name = config.name
        self.dim = config.binding.dim
        self.snapshot_every = snapshot_every
        self.closed = False
        self._ids: dict[str, int] = {}  # caller id -> internal id (the FAISS id)
        self._items: dict[int, Item] = {}
        self._vectors: dict[int, np.ndarray] = {}  # as added (L2-normalised for inner product)
        self._next_internal = 0
        self._seq = 0
        self._removed: set[int] = set()  # hnsw only: FAISS's HNSW cannot delete, so removals are filtered
        self._removed_selector: tuple[faiss.IDSelector, ...] | None = None
        self._whitening: tuple[np.ndarray, np.ndarray] | None = None  # x -> x @ A.T + b
        self._trained = False
        self._training = False
        self._index = new_index(config, self.dim)
        self._writes_since_snapshot = 0
        self._write_lock = threading.Lock()
        self._rw = ReadWriteLock()
        self._wal: WriteAheadLog | None = None
        self._sum = np.zeros(self.dim, np.float64)  # of the stored vectors: their mean is the drift reference
        self.drift = DriftMonitor()
        self.last_snapshot_at: float | None = None  # Unix time

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: pathlib.Path, config: index_pb2.Collection, snapshot_every: int) -> Collection:
        directory.mkdir(parents=True)
        text = json_format.MessageToJson(config, indent=2, preserving_proto_field_name=True).encode()
        write_atomically(directory / CONFIG, lambda f: f.write(text))
        collection = cls(directory, config, snapshot_every)
        collection._wal = WriteAheadLog(directory / WAL)
        return collection

    @classmethod
    def open(cls, directory: pathlib.Path, snapshot_every: int) -> Collection:
        try:
            config = json_format.Parse((directory / CONFIG).read_text(), index_pb2.Collection())
        except (OSError, json_format.ParseError) as err:
            raise CollectionLoadError(f"{directory / CONFIG} is unreadable ({err})") from err
        collection = cls(directory, config, snapshot_every)
        collection._load_snapshot()
        replayed = collection._replay()
        collection._wal = WriteAheadLog(directory / WAL)
        log.info(
            "collection restored",
            extra=fields(collection=config.name, items=collection.count, seq=collection._seq, replayed=replayed),
        )
        collection._maybe_train()
        return collection

    def close(self) -> None:
        """Takes a final snapshot so the next start replays nothing."""
        with self._write_lock:
            if self.closed:
                return
            if self._writes_since_snapshot:
                self._snapshot()
            self.closed = True
            if self._wal is not None:
                self._wal.close()

    def delete(self) -> None:
        with self._write_lock:
            self.closed = True
            if self._wal is not None:
                self._wal.close()

    # --- reads -----------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self._ids)

    def mean(self) -> np.ndarray | None:
        count = self.count
        return self._sum / count if count else None

    def wal_bytes(self) -> int:
        with self._write_lock:
            return self._wal.size if self._wal is not None and not self.closed else 0

    def info(self) -> index_pb2.Collection:
        info = index_pb2.Collection()
        info.CopyFrom(self.config)
        info.count = self.count
        info.bytes_on_disk = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        info.trained = self._trained
        info.whitening_dim = 0 if self._whitening is None else len(self._whitening[1])
        return info

    def labelled_vectors(self) -> tuple[np.ndarray, list[str]]:
        """The vectors and labels of every labelled item (for training heads)."""
        with self._rw.read():
            labelled = [i for i, (_, label, _) in self._items.items() if label]
            vectors = np.stack([self._vectors[i] for i in labelled]) if labelled else np.zeros((0, self.dim))
            return vectors, [self._items[i][1] for i in labelled]

    def vector_of(self, item_id: str) -> np.ndarray:
        with self._rw.read():
            internal = self._ids.get(item_id)
            if internal is None:
                raise NotFound(f"collection {self.name!r} has no item {item_id!r}")
            return self._vectors[internal]

    def search(self, queries: np.ndarray, k: int, ef_search: int = 0, nprobe: int = 0) -> list[list[Hit]]:
        """The k nearest items to each query vector (one FAISS batch)."""
        queries = self.prepare(queries)
        self.drift.observe(queries)
        with self._rw.read():
            if not self._items:
                return [[] for _ in queries]
            queries = self._to_index_space(queries, self._whitening)
            removed = self._removed_selector[-1] if self._removed_selector else None
            params = search_params(self.config, self._trained, ef_search, nprobe, removed)
            refine = self.config.ivfpq.refine_factor if self._trained else 1
            scores, internals = self._index.search(queries, min(k * refine, len(self._items)), params=params)
            results = []
            for query, row_scores, row_internals in zip(queries, scores, internals.tolist(), strict=True):
                ranked = [(float(s), i) for s, i in zip(row_scores, row_internals, strict=True) if i in self._items]
                if refine > 1 and ranked:
                    ranked = self._exact_top(query, [i for _, i in ranked], k)
                results.append([(self._items[i][0], score, *self._items[i][1:]) for score, i in ranked[:k]])
            return results

    def _exact_top(self, query: np.ndarray, candidates: list[int], k: int) -> list[tuple[float, int]]:
        """Re-ranks PQ candidates by their exact distance to the query (as faiss IndexRefineFlat would)."""
        exact = self._to_index_space(np.stack([self._vectors[i] for i in candidates]), self._whitening)
        if self.config.metric == index_pb2.METRIC_L2:
            scores = ((exact - query) ** 2).sum(axis=1)
            order = np.argsort(scores, kind="stable")[:k]
        else:
            scores = exact @ query
            order = np.argsort(-scores, kind="stable")[:k]
        return [(float(scores[i]), candidates[i]) for i in order]

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Checks vectors and L2-normalises them for an inner-product collection."""
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise InvalidArgument(
                f"vectors of collection {self.name!r} have {self.dim} values; got {vectors.shape[-1]}"
            )
        if not np.isfinite(vectors).all():
            raise InvalidArgument("a vector holds NaN or infinity")
        if self.config.metric == index_pb2.METRIC_INNER_PRODUCT:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            if (norms == 0).any():
                raise InvalidArgument(f"vector {int(np.argmin(norms))} is all zeros and cannot be normalised")
            vectors = vectors / norms
        return vectors

    def _to_index_space(self, vectors: np.ndarray, whitening: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        if whitening is not None:
            a, b = whitening
            vectors = vectors @ a.T + b
            if self.config.metric == index_pb2.METRIC_INNER_PRODUCT:
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(vectors, np.float32)

    # --- writes ----------------------------------------------------------------------------

    def add(self, items: list[Item], vectors: np.ndarray) -> list[str]:
        """Adds (or replaces, by id) items with their prepared vectors; durable when it returns."""
        with self._write_lock:
            self._check_open()
            ids = [item_id or uuid.uuid4().hex for item_id, _, _ in items]
            first = self._next_internal
            header = {
                "seq": self._seq + 1,
                "op": "add",
                "first": first,
                "items": [[i, label, meta] for i, (_, label, meta) in zip(ids, items, strict=True)],
            }
            self._log().append(_encode(header, vectors))
            self._apply(header, vectors)
            self._after_write(len(items))
        return ids

    def remove(self, item_ids: list[str]) -> tuple[int, list[str]]:
        with self._write_lock:
            self._check_open()
            present = [i for i in dict.fromkeys(item_ids) if i in self._ids]
            if present:
                header = {"seq": self._seq + 1, "op": "remove", "ids": present}
                self._log().append(_encode(header))
                self._apply(header, None)
                self._after_write(len(present))
        return len(present), [i for i in dict.fromkeys(item_ids) if i not in present]

    def train_whitening(self, dim: int) -> None:
        """Learns PCA-whitening from the collection's vectors and rebuilds the index (durable on return)."""
        with self._write_lock:
            self._check_open()
            dim = dim or self.dim
            if not 1 <= dim <= self.dim:
                raise InvalidArgument(f"whitening dim must be in 1..{self.dim}")
            if self.count <= dim:
                raise FailedPrecondition(
                    f"whitening to {dim} dimensions needs more than {dim} vectors; collection "
                    f"{self.name!r} has {self.count}: add more or ask for a smaller dim"
                )
            with self._rw.read():
                vectors = np.stack(list(self._vectors.values()))
            pca = faiss.PCAMatrix(self.dim, dim, -0.5)
            pca.train(vectors)
            a = faiss.vector_to_array(pca.A).reshape(dim, self.dim)
            whitening = (a, faiss.vector_to_array(pca.b))
            self._rebuild(whitening, trained_ivfpq=None)
            self._snapshot()
        self._maybe_train()

    def _log(self) -> WriteAheadLog:
        if self._wal is None:
            raise Unavailable(f"collection {self.name!r} is not open")
        return self._wal

    def _check_open(self) -> None:
        if self.closed:
            raise Unavailable(f"collection {self.name!r} is closing or deleted")

    def _apply(self, header: dict, vectors: np.ndarray | None) -> None:
        """Applies one logged write to memory and the index (live and during replay alike)."""
        with self._rw.write():
            if header["op"] == "add":
                assert vectors is not None, "an add carries vectors"
                internals = list(range(header["first"], header["first"] + len(header["items"])))
                self._drop([self._ids[item_id] for item_id, _, _ in header["items"] if item_id in self._ids])
                for internal, (item_id, label, meta), vector in zip(internals, header["items"], vectors, strict=True):
                    self._ids[item_id] = internal
                    self._items[internal] = (item_id, label, meta)
                    self._vectors[internal] = vector
                self._sum += vectors.sum(axis=0)
                self._index.add_with_ids(
                    self._to_index_space(vectors, self._whitening), np.asarray(internals, np.int64)
                )
                self._next_internal = internals[-1] + 1
            else:
                self._drop([self._ids[item_id] for item_id in header["ids"]])
            self._seq = header["seq"]

    def _drop(self, internals: list[int]) -> None:
        if not internals:
            return
        for internal in internals:
            item_id = self._items.pop(internal)[0]
            self._sum -= self._vectors.pop(internal)
            del self._ids[item_id]
        if self.config.index_type == "hnsw":
            self._removed.update(internals)
            batch = faiss.IDSelectorBatch(np.fromiter(self._removed, np.int64, len(self._removed)))
            self._removed_selector = (batch, faiss.IDSelectorNot(batch))
        else:
            self._index.remove_ids(np.asarray(internals, np.int64))  # type: ignore[arg-type]  # faiss wraps arrays

    def _after_write(self, items: int) -> None:
        self._writes_since_snapshot += items
        if self._removed and len(self._removed) > max(1000, self.count // 4):
            self._rebuild(self._whitening, self._trained_template())
        if self._writes_since_snapshot >= self.snapshot_every:
            self._snapshot()
        self._maybe_train()

    def _trained_template(self) -> faiss.Index | None:
        if not self._trained:
            return None
        template = faiss.clone_index(self._index)
        template.reset()
        return template

    def _rebuild(self, whitening: tuple[np.ndarray, np.ndarray] | None, trained_ivfpq: faiss.Index | None) -> None:
        """Builds a fresh index from the stored vectors, then swaps it in (searches go on meanwhile)."""
        with self._rw.read():
            internals = np.fromiter(self._items, np.int64, len(self._items))
            vectors = np.stack([self._vectors[i] for i in internals]) if len(internals) else None
        dim = self.dim if whitening is None else len(whitening[1])
        index = new_index(self.config, dim, trained_ivfpq)
        if vectors is not None:
            index.add_with_ids(self._to_index_space(vectors, whitening), internals)
        with self._rw.write():
            self._index, self._whitening, self._trained = index, whitening, trained_ivfpq is not None
            self._removed, self._removed_selector = set(), None

    def _maybe_train(self) -> None:
        """Starts ivfpq training in the background once the collection holds train_size vectors."""
        if (
            self.config.index_type != "ivfpq"
            or self._trained
            or self._training
            or self.count < self.config.ivfpq.train_size
        ):
            return
        self._training = True
        threading.Thread(target=self._train_ivfpq, name=f"train-{self.name}", daemon=True).start()

    def _train_ivfpq(self) -> None:
        try:
            with self._rw.read():
                whitening = self._whitening
                sample = self._to_index_space(np.stack(list(self._vectors.values())), whitening)
            trained = train_ivfpq(self.config, sample)
            with self._write_lock:
                if self.closed or whitening is not self._whitening:
                    return
                self._rebuild(whitening, trained)
                self._snapshot()
            log.info("ivfpq index trained", extra=fields(collection=self.name, vectors=len(sample)))
        except Exception:
            log.exception(
                "ivfpq training failed; the collection keeps answering exactly", extra=fields(collection=self.name)
            )
        finally:
            self._training = False

    # --- persistence -----------------------------------------------------------------------

    def _snapshot(self) -> None:
        with self._rw.read():
            internals = np.fromiter(self._items, np.int64, len(self._items))
            arrays: dict[str, Any] = {
                "internal_ids": internals,
                "vectors": np.stack([self._vectors[i] for i in internals])
                if len(internals)
                else np.zeros((0, self.dim), np.float32),
                "state": np.frombuffer(
                    json.dumps(
                        {
                            "seq": self._seq,
                            "next_internal": self._next_internal,
                            "trained": self._trained,
                            "items": [self._items[i] for i in internals],
                            "removed": sorted(self._removed),
                        }
                    ).encode(),
                    np.uint8,
                ),
            }
            if self._whitening is not None:
                arrays["whitening_a"], arrays["whitening_b"] = self._whitening
            if self.config.index_type == "hnsw" or self._trained:
                arrays["faiss"] = faiss.serialize_index(self._index)
        write_atomically(self.directory / SNAPSHOT, lambda f: np.savez(f, **arrays))
        self._log().truncate()
        self._writes_since_snapshot = 0
        self.last_snapshot_at = time.time()

    def _load_snapshot(self) -> None:
        path = self.directory / SNAPSHOT
        if not path.exists():
            return
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            state = json.loads(arrays["state"].tobytes())
            internals, vectors = arrays["internal_ids"], arrays["vectors"].astype(np.float32)
            if vectors.shape != (len(internals), self.dim) or len(state["items"]) != len(internals):
                raise ValueError(
                    f"{len(internals)} ids, {len(state['items'])} items and vectors of shape "
                    f"{vectors.shape} do not agree (dimension {self.dim})"
                )
        except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as err:
            raise CollectionLoadError(
                f"{path} is corrupt or truncated ({err}); restore the collection folder from a backup or delete it"
            ) from err
        self._seq, self._next_internal = state["seq"], state["next_internal"]
        for internal, (item_id, label, meta), vector in zip(internals.tolist(), state["items"], vectors, strict=True):
            self._ids[item_id] = internal
            self._items[internal] = (item_id, label, meta)
            self._vectors[internal] = vector
        self._sum = vectors.sum(axis=0, dtype=np.float64)
        self.last_snapshot_at = path.stat().st_mtime
        if "whitening_a" in arrays:
            self._whitening = (arrays["whitening_a"], arrays["whitening_b"])
        self._trained = state["trained"]
        self._removed = set(state["removed"])
        if self._removed:
            batch = faiss.IDSelectorBatch(np.fromiter(self._removed, np.int64, len(self._removed)))
            self._removed_selector = (batch, faiss.IDSelectorNot(batch))
        if "faiss" in arrays:
            self._index = faiss.deserialize_index(arrays["faiss"])
            if self._index.ntotal != len(internals) + len(self._removed):
                raise CollectionLoadError(
                    f"{path}: its FAISS index holds {self._index.ntotal} vectors for "
                    f"{len(internals)} items; restore the folder from a backup or delete it"
                )
        else:
            dim = self.dim if self._whitening is None else len(self._whitening[1])
            self._index = new_index(self.config, dim)
            if len(internals):
                self._index.add_with_ids(self._to_index_space(vectors, self._whitening), internals)

    def _replay(self) -> int:
        replayed = 0
        try:
            for payload in WriteAheadLog.read(self.directory / WAL):
                header, vectors = _decode(payload, self.dim)
                if header["seq"] <= self._seq:
                    continue  # already in the snapshot (a crash between snapshot and log truncation)
                if header["seq"] != self._seq + 1:
                    raise CollectionLoadError(
                        f"{self.directory / WAL} continues at write {header['seq']} but the snapshot ends at "
                        f"write {self._seq}; writes are missing, so the collection is not restored"
                    )
                self._apply(header, vectors)
                replayed += 1
        except CorruptLog as err:
            raise CollectionLoadError(str(err)) from err
        return replayed
