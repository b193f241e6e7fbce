"""A collection's items in SQLite: the source of truth. The FAISS index is derived from it.

One database file per collection (``items.sqlite3``) holds every item (caller id, FAISS id, label, metadata,
float32 vector, the write that last set it) and the collection's state (configuration, write sequence, next
FAISS id, whitening, sum of vectors). A write is one transaction; it is acknowledged after it commits.

Journal mode WAL with ``synchronous=FULL``: a commit returns after SQLite's log is fsynced, so an acknowledged
write survives a power cut as well as a crash (NORMAL would only survive a crash of this process, and the
fsync per write is the same one the previous write-ahead log paid). Readers never wait for the writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import pathlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from offshelf.service.errors import CollectionLoadError
from offshelf.service.index.config import CollectionConfig
from offshelf.service.index.contract import Filter, Row

DATABASE = "items.sqlite3"


@dataclasses.dataclass(frozen=True)
class WriteState:
    """A collection's counters, committed with every write: the last write, the next FAISS id, the sum of the
    stored vectors (their mean is the drift reference) and the write since which the vector space holds (index files
    older than it were whitened otherwise)."""

    vector_sum: np.ndarray  # float64
    seq: int = 0
    next_internal: int = 0
    rebuilt_seq: int = 0

    @classmethod
    def read(cls, store: ItemStore, dim: int) -> WriteState:
        total = store.get_state("vector_sum")
        return cls(
            np.frombuffer(total, "<f8").astype(np.float64) if isinstance(total, bytes) else np.zeros(dim, np.float64),
            *(int(store.get_state(key, 0)) for key in ("seq", "next_internal", "rebuilt_seq")),  # type: ignore[call-overload]
        )

    def commit(self, db: sqlite3.Connection) -> None:
        ItemStore.set_state(db, "seq", self.seq)
        ItemStore.set_state(db, "next_internal", self.next_internal)
        ItemStore.set_state(db, "rebuilt_seq", self.rebuilt_seq)
        ItemStore.set_state(db, "vector_sum", self.vector_sum.astype("<f8").tobytes())


SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    internal INTEGER NOT NULL UNIQUE,  -- the FAISS id
    label TEXT NOT NULL,
    metadata TEXT NOT NULL,            -- a JSON object of strings
    vector BLOB NOT NULL,              -- float32, little-endian, as stored (L2-normalised for inner product)
    seq INTEGER NOT NULL               -- the write that last set the item
);
CREATE INDEX IF NOT EXISTS items_by_seq ON items (seq);
CREATE INDEX IF NOT EXISTS items_by_label ON items (label);
CREATE TABLE IF NOT EXISTS item_metadata (  -- each metadata entry again, so that filters select through an index
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    internal INTEGER NOT NULL,
    PRIMARY KEY (key, value, internal)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS item_metadata_by_internal ON item_metadata (internal);
CREATE TABLE IF NOT EXISTS metadata_keys (key TEXT PRIMARY KEY);  -- every key an item has had, for filters
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS thumbnails (id TEXT PRIMARY KEY, jpeg BLOB NOT NULL);  -- thumbnail_size collections
"""


def where_sql(where: Filter) -> tuple[str, list[str]]:
    """The filter as a WHERE clause (without the keyword; "1" when empty) and its parameters."""
    clauses = ["label != ''"] if where.labelled else []
    parameters: list[str] = []
    if where.labels:
        clauses.append(f"label IN ({', '.join('?' * len(where.labels))})")
        parameters += where.labels
    for key, values in where.metadata:
        marks = ", ".join("?" * len(values))
        clauses.append(f"internal IN (SELECT internal FROM item_metadata WHERE key = ? AND value IN ({marks}))")
        parameters += [key, *values]
    return " AND ".join(clauses) or "1", parameters


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, "<f4").tobytes()


def from_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), "<f4").reshape(len(blobs), dim).astype(np.float32)


class ItemStore:
    """The SQLite database of one collection. Writes must be serialised by the caller (the collection's write
    lock); reads may come from any thread, each on a connection of its own."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self.unreadable_is_a_load_error():
            self._connection().executescript(SCHEMA)  # its own transaction

    @contextlib.contextmanager
    def unreadable_is_a_load_error(self) -> Iterator[None]:
        """Damage SQLite meets in the block (the file header, the schema, the state, the indexes that opening a
        collection reads) becomes a start-up error naming the file. There is no full integrity check at start:
        it reads every page (17 s for a million 1280-d vectors)."""
        try:
            yield
        except sqlite3.DatabaseError as err:
            raise CollectionLoadError(
                f"{self.path} is damaged or not an SQLite database ({err}); restore it from a backup or delete "
                "the collection's folder"
            ) from err

    # --- connections -----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (and fsynced) when the block ends, rolled back on an exception."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def read(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple]:
        return self._connection().execute(sql, parameters).fetchall()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        self._local = threading.local()

    # --- state -------------------------------------------------------------------------------------

    def get_state(self, key: str, default: object = None) -> object:
        rows = self.read("SELECT value FROM state WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    @staticmethod
    def set_state(db: sqlite3.Connection, key: str, value: object) -> None:
        db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    def config(self) -> CollectionConfig:
        text = self.get_state("config")
        if not isinstance(text, str):
            raise CollectionLoadError(f"{self.path} holds no collection configuration; delete the collection folder")
        return CollectionConfig.from_json(text)

    @staticmethod
    def set_config(db: sqlite3.Connection, config: CollectionConfig) -> None:
        ItemStore.set_state(db, "config", config.to_json())

    def arrays(self, key: str) -> dict[str, np.ndarray] | None:
        blob = self.get_state(key)
        if blob is None:
            return None
        with np.load(io.BytesIO(blob)) as data:  # type: ignore[arg-type]
            return {name: data[name] for name in data.files}

    @staticmethod
    def set_arrays(db: sqlite3.Connection, key: str, arrays: dict[str, np.ndarray] | None) -> None:
        if arrays is None:
            db.execute("DELETE FROM state WHERE key = ?", (key,))
            return
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        ItemStore.set_state(db, key, buffer.getvalue())

    # --- items -------------------------------------------------------------------------------------

    @staticmethod
    def put_items(
        db: sqlite3.Connection, rows: Sequence[tuple[Row, np.ndarray]], seq: int, replaced: Sequence[int]
    ) -> None:
        """Writes items (an existing id is replaced: `replaced` are the FAISS ids they had) and their metadata."""
        ItemStore._forget_metadata(db, replaced)
        db.executemany(
            "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    row.id,
                    row.internal,
                    row.label,
                    json.dumps(row.metadata, ensure_ascii=False, sort_keys=True),
                    to_blob(vector),
                    seq,
                )
                for row, vector in rows
            ],
        )
        entries = [(key, value, row.internal) for row, _ in rows for key, value in row.metadata.items()]
        db.executemany("INSERT INTO item_metadata VALUES (?, ?, ?)", entries)
        db.executemany("INSERT OR IGNORE INTO metadata_keys VALUES (?)", [(key,) for key in {e[0] for e in entries}])

    @staticmethod
    def delete_items(db: sqlite3.Connection, rows: Sequence[Row]) -> None:
        db.executemany("DELETE FROM items WHERE id = ?", [(row.id,) for row in rows])
        db.executemany("DELETE FROM thumbnails WHERE id = ?", [(row.id,) for row in rows])
        ItemStore._forget_metadata(db, [row.internal for row in rows])

    @staticmethod
    def put_thumbnails(db: sqlite3.Connection, ids: Sequence[str], thumbnails: Sequence[bytes] | None) -> None:
        """Each item's thumbnail; an item written without one (b"") loses the one it had; None: all are kept."""
        if thumbnails is None:
            return
        pairs = list(zip(ids, thumbnails, strict=True))
        db.executemany("DELETE FROM thumbnails WHERE id = ?", [(i,) for i, jpeg in pairs if not jpeg])
        db.executemany("INSERT OR REPLACE INTO thumbnails VALUES (?, ?)", [(i, jpeg) for i, jpeg in pairs if jpeg])

    def thumbnails(self, ids: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            marks = ", ".join("?" * len(part))
            found.update(self.read(f"SELECT id, jpeg FROM thumbnails WHERE id IN ({marks})", part))
        return found

    @staticmethod
    def _forget_metadata(db: sqlite3.Connection, internals: Sequence[int]) -> None:
        db.executemany("DELETE FROM item_metadata WHERE internal = ?", [(internal,) for internal in internals])

    def count(self, where: Filter = Filter()) -> int:
        clause, parameters = where_sql(where)
        return self.read(f"SELECT count(*) FROM items WHERE {clause}", parameters)[0][0]

    def internals(self, where: Filter = Filter()) -> np.ndarray:
        clause, parameters = where_sql(where)
        rows = self.read(f"SELECT internal FROM items WHERE {clause}", parameters)
        return np.fromiter((r[0] for r in rows), np.int64, len(rows))

    def metadata_keys(self) -> set[str]:
        return {row[0] for row in self.read("SELECT key FROM metadata_keys")}

    def ids(self, where: Filter) -> list[str]:
        clause, parameters = where_sql(where)
        return [row[0] for row in self.read(f"SELECT id FROM items WHERE {clause}", parameters)]

    def _select_in(self, columns: str, key: str, values: Sequence[object]) -> list[tuple]:
        """SELECT columns of the items whose `key` is one of values, 500 values a query (SQLite's limit on
        parameters is 999 on older builds)."""
        found: list[tuple] = []
        for start in range(0, len(values), 500):
            part = list(values[start : start + 500])
            found += self.read(f"SELECT {columns} FROM items WHERE {key} IN ({', '.join('?' * len(part))})", part)
        return found

    def rows(self, internals: Sequence[int]) -> dict[int, Row]:
        """The items with these FAISS ids (absent ones are left out)."""
        return {
            r[0]: Row(r[1], r[0], r[2], json.loads(r[3]))
            for r in self._select_in("internal, id, label, metadata", "internal", internals)
        }

    def vectors(self, internals: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        rows = self._select_in("internal, vector", "internal", internals)
        return dict(zip((r[0] for r in rows), from_blobs([r[1] for r in rows], dim), strict=True))

    def by_ids(self, item_ids: Sequence[str], dim: int) -> dict[str, tuple[Row, np.ndarray]]:
        rows = self._select_in("internal, id, label, metadata, vector", "id", item_ids)
        vectors = from_blobs([r[4] for r in rows], dim)
        return {r[1]: (Row(r[1], r[0], r[2], json.loads(r[3])), v) for r, v in zip(rows, vectors, strict=True)}

    def scan(
        self, dim: int, where: Filter = Filter(), after_seq: int = -1, chunk: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """(FAISS ids, vectors, labels) of the selected items written after `after_seq`, `chunk` at a time,
        so rebuilding an index never holds a second copy of every vector."""
        clause, parameters = where_sql(where)
        cursor = self._connection().execute(
            f"SELECT internal, vector, label FROM items WHERE seq > ? AND ({clause}) ORDER BY internal",
            [after_seq, *parameters],
        )
        while rows := cursor.fetchmany(chunk):
            yield (
                np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                from_blobs([r[1] for r in rows], dim),
                [r[2] for r in rows],
            )

    def page(self, after_id: str, size: int, where: Filter, with_vectors: bool) -> list[tuple]:
        """Items in id order after `after_id`: (id, internal, label, metadata, vector or None) rows."""
        clause, parameters = where_sql(where)
        vector = "vector" if with_vectors else "NULL"  # the blobs are most of the database: read them only if asked
        sql = (
            f"SELECT id, internal, label, metadata, {vector} FROM items WHERE id > ? AND ({clause}) ORDER BY id LIMIT ?"
        )
        return self.read(sql, [after_id, *parameters, size])
