"""One-shot migration of a collection folder from the previous format (``collection.json``, ``snapshot.npz``,
``wal.log``) to the SQLite store, run at start for each folder that has not been migrated.

The old state is the snapshot plus every intact record of the write-ahead log after it (a torn last record
was never acknowledged and is skipped, as the old recovery did). The database is written under a temporary
name and renamed into place; only then are the old files removed, so a crash midway leaves a folder that
migrates again.
"""

from __future__ import annotations

import json
import logging
import pathlib
import struct
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np

from offshelf.service.errors import CollectionLoadError
from offshelf.service.index.config import CollectionConfig
from offshelf.service.index.contract import Row
from offshelf.service.index.embedded.store import DATABASE, ItemStore, WriteState
from offshelf.service.logs import fields

log = logging.getLogger(__name__)
OLD_FILES = ("collection.json", "snapshot.npz", "wal.log")
RECORD = struct.Struct("<II")  # payload length, crc32(payload)
Items = dict[str, tuple[str, dict[str, str], np.ndarray]]  # id -> (label, metadata, vector), in insertion order


def needs_migration(directory: pathlib.Path) -> bool:
    return (directory / OLD_FILES[0]).exists() and not (directory / DATABASE).exists()


def migrate(directory: pathlib.Path) -> None:
    try:
        config = CollectionConfig.from_json((directory / "collection.json").read_text())
        items, whitening = _snapshot(directory / "snapshot.npz", config.binding.dim)
        for header, vectors in _log_records(directory / "wal.log", config.binding.dim):
            if header["op"] == "add":
                for (item_id, label, metadata), vector in zip(header["items"], vectors, strict=True):
                    items.pop(item_id, None)
                    items[item_id] = (label, metadata, vector)
            else:
                for item_id in header["ids"]:
                    items.pop(item_id, None)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, TypeError) as err:
        raise CollectionLoadError(
            f"{directory} is in the previous format and cannot be read to migrate it ({err}); restore it from a "
            "backup or delete it"
        ) from err
    staged = directory / f"{DATABASE}.migrating"
    staged.unlink(missing_ok=True)
    store = ItemStore(staged)
    with store.transaction() as db:
        ItemStore.set_config(db, config)
        rows = [
            (Row(item_id, internal, label, metadata), vector)
            for internal, (item_id, (label, metadata, vector)) in enumerate(items.items())
        ]
        ItemStore.put_items(db, rows, seq=1, replaced=[])
        total = sum((vector.astype(np.float64) for _, _, vector in items.values()), np.zeros(config.binding.dim))
        WriteState(total, seq=1, next_internal=len(items), rebuilt_seq=int(whitening is not None)).commit(db)
        if whitening is not None:
            ItemStore.set_arrays(db, "whitening", {"a": whitening[0], "b": whitening[1]})
    store.read("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    staged.rename(directory / DATABASE)
    for name in OLD_FILES:
        (directory / name).unlink(missing_ok=True)
    log.info("collection migrated to SQLite", extra=fields(collection=config.name, items=len(items)))


def _snapshot(path: pathlib.Path, dim: int) -> tuple[Items, tuple[np.ndarray, np.ndarray] | None]:
    if not path.exists():
        return {}, None
    with np.load(path, allow_pickle=False) as data:
        state = json.loads(data["state"].tobytes())
        vectors = data["vectors"].astype(np.float32).reshape(-1, dim)
        whitening = (data["whitening_a"], data["whitening_b"]) if "whitening_a" in data.files else None
    items: Items = {
        item_id: (label, metadata, vector)
        for (item_id, label, metadata), vector in zip(state["items"], vectors, strict=True)
    }
    return items, whitening


def _log_records(path: pathlib.Path, dim: int) -> Iterator[tuple[dict, np.ndarray]]:
    """(header, vectors) of each intact record; stops at a torn tail; ValueError for a bad record mid-log."""
    data = path.read_bytes() if path.exists() else b""
    offset = 0
    while offset + RECORD.size <= len(data):
        length, crc = RECORD.unpack_from(data, offset)
        end = offset + RECORD.size + length
        payload = data[offset + RECORD.size : end]
        if end > len(data) or zlib.crc32(payload) != crc:
            if end < len(data):
                raise ValueError(f"{path}: the record at byte {offset} fails its checksum with more records after it")
            return  # a torn tail: never acknowledged
        (head,) = struct.unpack_from("<I", payload)
        header = json.loads(payload[4 : 4 + head])
        yield header, np.frombuffer(payload[4 + head :], "<f4").reshape(-1, dim).copy()
        offset = end
