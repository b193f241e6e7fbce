"""Whitening a Milvus collection into a new generation, and recovering from a replica that died doing it.

The states of a collection's alias, and who moves it on (every move is a Milvus rename or alias change, atomic):

    offshelf_table_<key>_<g>  --(whitening renames: writes refused)-->  offshelf_migrating_<key>_<g>
    offshelf_migrating_<g>  --(new table <t> complete; the whitening renames)-->  offshelf_retired_<key>_<g>
    offshelf_retired_<g>  --(alias to offshelf_table_<key>_<t>; old table and whitening dropped)-->  settled on t
    offshelf_migrating_<g>  --(the whitening fails, or its fence expired)-->  offshelf_table_<key>_<g> again

Before its first rename a whitening writes a fence, the blob ``fences/<key>/<owner>`` (its generations and a
deadline), renewed every ttl/3. A replica that meets a migrating table whose fences have all expired (or that has
none: left by a version without fences) renames it back and drops what the dead whitening built; a retired table is
moved on at once. Renames decide races: a whitening whose table another replica renamed back cannot retire it, so
it never moves the alias past writes made since. Target generations are unique (a timestamp), so what a rollback
drops late is never another whitening's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from offshelf.service.errors import FailedPrecondition, Unavailable
from offshelf.service.index.milvus.calls import milvus_errors
from offshelf.service.index.milvus.collection import (
    MAX_RAW_DIM,
    MIGRATING,
    RETIRED,
    create_table,
    key,
    physical_name,
    raw_field,
    raw_pages,
    raw_vectors,
    table_name,
    whitening_blob,
)
from offshelf.service.index.vectors import check_whitening, learn_whitening
from offshelf.service.logs import fields

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from offshelf.service.index.milvus.blobs import Blobs
    from offshelf.service.index.milvus.collection import MilvusCollection

log = logging.getLogger(__name__)
FENCE_SETTLE_SECONDS = 1.0


def fence_prefix(table_key: str) -> str:
    return f"fences/{table_key}/"


def _quietly(operation: Callable[..., object], *args: str) -> bool:
    """Runs a rename or drop that another replica may have done already; whether this call did it."""
    try:
        operation(*args)
    except Unavailable:
        raise
    except Exception:  # noqa: BLE001  # Milvus refuses to rename or drop a table that is gone
        return False
    return True


class Fence:
    """This whitening's fence blob, renewed by a thread until closed."""

    def __init__(self, blobs: Blobs, table_key: str, source: int, target: int, ttl: float):
        self.blobs, self.ttl = blobs, ttl
        self.name = fence_prefix(table_key) + uuid.uuid4().hex
        self.body = {"source": source, "target": target}
        self._stop = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._renew, name="whitening-fence", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        self.blobs.put(self.name, json.dumps({**self.body, "deadline": time.time() + self.ttl}).encode())

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with contextlib.suppress(Exception):  # a missed renewal shortens the fence; the next one restores it
                self._write()

    def close(self, remove: bool = True) -> None:
        self._stop.set()
        self._thread.join()
        if remove:
            self.blobs.delete(self.name + "#")


def train(collection: MilvusCollection, dim: int, sample: np.ndarray | None, source_name: str, ttl: float) -> None:
    """Whitens the collection (its table, which is not migrating) into a new generation; see the module's doc."""
    c = collection
    if sample is None:
        dim = check_whitening(dim, c.config, c._count(""))
    else:
        dim = check_whitening(dim, c.config, len(sample), source_name)
    if c.dim > MAX_RAW_DIM:
        raise FailedPrecondition(f"Milvus collections whiten vectors of at most {MAX_RAW_DIM} values")
    target_generation = max(c.generation + 1, time.time_ns() // 1000)  # unique: see the module's doc
    fence = Fence(c.blobs, key(c.name), c.generation, target_generation, ttl)
    settled = True
    try:
        migrating = f"{MIGRATING}{key(c.name)}_{c.generation}"
        with milvus_errors(c.name):
            c.client.rename_collection(c.table, migrating)  # from here on, no replica writes to it
        time.sleep(FENCE_SETTLE_SECONDS)  # a write whose proxy resolved the old name just before lands first
        config = dataclasses.replace(c.config, whitening_dim=dim)
        source = c._with(table=migrating)
        target = c._with(table=table_name(c.name, target_generation), config=config)
        try:
            _build(c, source, target, dim, sample)
            retired = f"{RETIRED}{key(c.name)}_{c.generation}"
            with milvus_errors(c.name):
                c.client.rename_collection(migrating, retired)  # the commit: fails if another replica rolled back
        except BaseException:
            _quietly(c.client.rename_collection, migrating, c.table)
            _drop_generation(c.client, c.blobs, c.name, target_generation)
            raise
        settled = False  # from here on only forward: a failure leaves the fence for recovery to finish
        _forward(c.client, c.blobs, c.name, c.generation, retired, target_generation)
        settled = True
    finally:
        fence.close(remove=settled)


def _build(c: MilvusCollection, source: MilvusCollection, target: MilvusCollection, dim: int, sample) -> None:
    """The whitening blob and the complete table of the target generation."""
    whitening = learn_whitening(np.concatenate(list(raw_pages(source))) if sample is None else sample, dim)
    buffer = io.BytesIO()
    np.savez(buffer, a=whitening[0], b=whitening[1])
    c.blobs.put(whitening_blob(c.name, target.generation), buffer.getvalue())
    create_table(c.client, target.config, target.table)
    target.whitening = whitening
    for page in source._pages("", ["label", "metadata", raw_field(source.config)]):
        items = [(row["id"], row["label"], row.get("metadata") or {}) for row in page]
        target._upsert([row["id"] for row in page], items, raw_vectors(page, source.config))
    target._count("")  # read Strong: the new table serves every copied item before the alias moves


def _drop_generation(client: MilvusClient, blobs: Blobs, name: str, generation: int) -> None:
    with milvus_errors(name):
        if client.has_collection(table_name(name, generation)):
            _quietly(client.drop_collection, table_name(name, generation))
    blobs.delete(whitening_blob(name, generation) + "#")


def _forward(client: MilvusClient, blobs: Blobs, name: str, generation: int, retired: str, target: int) -> None:
    with milvus_errors(name):
        client.alter_alias(table_name(name, target), physical_name(name))
        _quietly(client.drop_collection, retired)
    blobs.delete(whitening_blob(name, generation) + "#")  # that file's chunks only


def recover(client: MilvusClient, blobs: Blobs, name: str) -> None:
    """Finishes or undoes a whitening whose replica died: a retired table is moved forward, a migrating one whose
    fences have all expired rolled back. Does nothing while a whitening is alive."""
    with milvus_errors(name):
        table = client.describe_collection(physical_name(name))["collection_name"]
    generation = int(table.rsplit("_", 1)[1])
    fences = {}
    for fence in blobs.names(fence_prefix(key(name))):
        data = blobs.get(fence)
        with contextlib.suppress(ValueError, TypeError):
            body = json.loads(data or b"")
            if body["source"] == generation:
                fences[fence] = body
    if table.startswith(RETIRED):
        targets = [f["target"] for f in fences.values() if client.has_collection(table_name(name, f["target"]))]
        if not targets:
            return  # not possible: a whitening retires its table only with the new one complete, fence kept
        log.warning("finishing a whitening whose replica died", extra=fields(collection=name, generation=targets[0]))
        _forward(client, blobs, name, generation, table, targets[0])
    elif table.startswith(MIGRATING):
        if any(f["deadline"] > time.time() for f in fences.values()):
            return  # still whitening
        with milvus_errors(name):
            if not _quietly(client.rename_collection, table, table_name(name, generation)):
                return  # another replica rolled back first
        log.warning("rolled back a whitening whose replica died", extra=fields(collection=name, generation=generation))
        for target in {f["target"] for f in fences.values()} or {generation + 1}:  # +1: a version without fences
            _drop_generation(client, blobs, name, target)
    else:
        return
    for fence in fences:
        blobs.delete(fence + "#")


def recover_all(collections: list[MilvusCollection]) -> None:
    """recover() for every collection left migrating or retired (at a server's start)."""
    for c in collections:
        if c.migrating:
            try:
                recover(c.client, c.blobs, c.name)
            except Exception:  # one collection's trouble must not keep the server from starting
                log.exception("could not recover a whitening", extra=fields(collection=c.name))
