"""The collections of a Milvus server: every replica pointed at the same Milvus serves the same collections.

Nothing is held that another replica could change unseen for long: a collection's configuration is read from
Milvus and kept CONFIG_SECONDS (a replica whose table has gone meanwhile looks again at once), the list of
collections is read on every call. A generation's whitening never changes, so it is kept as long as it is used.

Every call goes through GuardedClient: while Milvus does not answer, every call is UNAVAILABLE (never NOT_FOUND: an
outage is not data loss; pymilvus fails at once on a refused connection), a probe every PROBE_SECONDS notices an
outage without traffic and the end of one, and each change is logged once and reported to the server (health of
the Index service).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from pymilvus import MilvusClient, MilvusException

from offshelf.service.errors import AlreadyExists, CollectionLoadError, NotFound, Unavailable
from offshelf.service.index.config import CollectionConfig
from offshelf.service.index.milvus import whitening as milvus_whitening
from offshelf.service.index.milvus.blobs import Blobs
from offshelf.service.index.milvus.calls import TableGone, milvus_errors, unreachable
from offshelf.service.index.milvus.collection import (
    ALIAS,
    FENCE_SECONDS,
    MIGRATING,
    RETIRED,
    TABLE,
    MilvusCollection,
    create_table,
    physical_name,
    table_name,
    whitening_blob,
)
from offshelf.service.index.milvus.thumbnails import thumbnail_blob
from offshelf.service.index.vectors import Whitening
from offshelf.service.logs import fields
from offshelf.service.periodic import every

log = logging.getLogger(__name__)
CONFIG_SECONDS = 5.0
PROBE_SECONDS, PROBE_TIMEOUT = 1.0, 2.0
# A channel of its own that reconnects within seconds (gRPC's default backoff grows to 2 minutes after an outage)
GRPC_OPTIONS = {"grpc.use_local_subchannel_pool": 1, "grpc.max_reconnect_backoff_ms": 2000}
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its errors reach the caller as statuses, once


def connect(uri: str, token: str, ca_file: str, timeout: float = 30) -> MilvusClient:
    """A client of the Milvus at `uri` (calls time out after `timeout` s); CollectionLoadError when it does not
    answer."""
    try:
        return MilvusClient(
            uri=uri,
            token=token,
            timeout=timeout,
            dedicated=True,  # not pymilvus's connection shared by every client of the process
            grpc_options=GRPC_OPTIONS,
            **({"server_pem_path": ca_file} if ca_file else {}),
        )
    except (MilvusException, OSError) as err:
        raise CollectionLoadError(
            f"cannot reach Milvus at {uri} ({getattr(err, 'message', err)}); check OFFSHELF_MILVUS_URI, "
            "OFFSHELF_MILVUS_TOKEN and that Milvus is running"
        ) from err


class GuardedClient:
    """A MilvusClient's methods, whose failures to reach Milvus are Unavailable naming the address: such a failure
    marks Milvus down, an answer (to a call, or to probe()) up again."""

    def __init__(self, connect: Callable[..., MilvusClient], uri: str):
        self.connect, self.uri = connect, uri
        self.client = connect()
        self.up = True
        self.on_change: Callable[[bool], None] = lambda up: None
        self._down_since = 0.0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = method(*args, **kwargs)
            except MilvusException as err:
                if not unreachable(err):
                    raise
                self.mark(False, err.message or str(err))
                raise self.refusal() from err
            if not self.up:
                self.mark(True, "")
            return result

        return call

    def refusal(self) -> Unavailable:
        return Unavailable(f"Milvus does not answer at {self.uri}; retry (is Milvus running? OFFSHELF_MILVUS_URI)")

    def probe(self) -> None:
        if self.up:
            try:
                self.client.list_collections(timeout=PROBE_TIMEOUT)
            except MilvusException as err:
                if unreachable(err):
                    self.mark(False, err.message or str(err))
            return
        try:
            fresh = self.connect()
        except CollectionLoadError:
            return
        try:
            fresh.list_collections(timeout=PROBE_TIMEOUT)
        except MilvusException:
            fresh.close()
            return
        stale, self.client = self.client, fresh
        with contextlib.suppress(Exception):
            stale.close()
        self.mark(True, "")

    def mark(self, up: bool, error: str) -> None:
        """Logs and reports a change (under the lock, so that reports arrive in order)."""
        with self._lock:
            if up == self.up:
                return
            self.up = up
            if up:
                down = round(time.monotonic() - self._down_since, 1)
                log.info("Milvus answers again", extra=fields(uri=self.uri, seconds_down=down))
            else:
                self._down_since = time.monotonic()
                log.warning("Milvus does not answer", extra=fields(uri=self.uri, error=error))
            self.on_change(up)


class MilvusCollectionRegistry:
    def __init__(self, uri: str, token: str, ca_file: str, consistency: str, fence_seconds: float = FENCE_SECONDS):
        self.uri, self.token, self.ca_file = uri, token, ca_file
        self.consistency = consistency
        self.fence_seconds = fence_seconds  # of a whitening: see whitening.py
        self.guard: GuardedClient | None = None
        self.client: MilvusClient | None = None
        self.blobs: Blobs | None = None
        self._cache: dict[str, tuple[float, MilvusCollection]] = {}
        self._whitenings: dict[str, Whitening] = {}  # by blob name
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def load_all(self) -> None:
        self.guard = GuardedClient(functools.partial(connect, self.uri, self.token, self.ca_file), self.uri)
        self.client = cast(MilvusClient, self.guard)
        self.blobs = Blobs(self.client)
        milvus_whitening.recover_all(self.all())  # whitenings left by replicas that died
        log.info("collections on Milvus", extra={"uri": self.uri, "collections": len(self._keys())})

    def watch(self, on_change: Callable[[bool], None]) -> None:
        """Reports whether Milvus answers to on_change now and at each change, probing every PROBE_SECONDS."""
        assert self.guard is not None
        guard = self.guard
        guard.on_change = on_change
        on_change(guard.up)
        every(PROBE_SECONDS, guard.probe, self._stop, "milvus-probe")

    def connected(self) -> tuple[MilvusClient, Blobs]:
        if self.client is None or self.blobs is None:
            raise Unavailable("the server is still connecting to Milvus; retry when health reports SERVING")
        return self.client, self.blobs

    def _keys(self) -> list[str]:
        """The key of every collection with a table (a migrating one included)."""
        client, _ = self.connected()
        with milvus_errors("*"):
            tables = client.list_collections()
        return sorted(
            {
                t.removeprefix(TABLE).removeprefix(MIGRATING).removeprefix(RETIRED).rsplit("_", 1)[0]
                for t in tables
                if t.startswith((TABLE, MIGRATING, RETIRED))
            }
        )

    def _open(self, alias: str) -> MilvusCollection | None:
        """The collection the alias points at, or None when it is gone or not one of offshelf's."""
        client, blobs = self.connected()
        try:
            with milvus_errors(alias):
                described = client.describe_collection(alias)
            config = CollectionConfig.from_json(described["description"])
        except (TableGone, ValueError, KeyError, TypeError):  # not one of offshelf's tables
            return None
        table = described["collection_name"]
        whitening = None
        if config.whitening_dim:
            whitening = self._whitening(blobs, whitening_blob(config.name, int(table.rsplit("_", 1)[1])))
        return MilvusCollection(
            client, blobs, config, table, whitening, self.consistency, self.reopen, self.fence_seconds
        )

    def _whitening(self, blobs: Blobs, name: str) -> Whitening:
        with self._lock:
            cached = self._whitenings.get(name)
        if cached is not None:
            return cached
        data = blobs.get(name)
        if data is None:
            raise TableGone(f"the whitening {name} is gone: the collection was whitened again or deleted")
        with np.load(io.BytesIO(data)) as arrays:
            whitening = (arrays["a"], arrays["b"])
        with self._lock:
            self._whitenings[name] = whitening
        return whitening

    def create(self, config: CollectionConfig) -> MilvusCollection:
        client, _ = self.connected()
        alias = physical_name(config.name)
        if self._open(alias) is not None:
            raise AlreadyExists(f"collection {config.name!r} exists; delete it first or pick another name")
        table = table_name(config.name, 0)
        create_table(client, config, table)
        try:
            with milvus_errors(config.name):
                client.create_alias(table, alias)
        except Unavailable:
            raise
        except Exception as err:  # another replica created it meanwhile
            with milvus_errors(config.name):
                client.drop_collection(table)
            raise AlreadyExists(f"collection {config.name!r} exists; delete it first or pick another name") from err
        return self.get(config.name)

    def get(self, name: str) -> MilvusCollection:
        with self._lock:
            cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < CONFIG_SECONDS:
            return cached[1]
        return self.reopen(name)

    def reopen(self, name: str) -> MilvusCollection:
        """Looks the collection up in Milvus now."""
        collection = self._open(physical_name(name))
        with self._lock:
            if collection is None:
                self._cache.pop(name, None)
                raise NotFound(f"no collection named {name!r}; ListCollections lists them")
            self._cache[name] = (time.monotonic(), collection)
        return collection

    def all(self) -> list[MilvusCollection]:
        opened = [self._open(ALIAS + key) for key in self._keys()]
        return sorted((c for c in opened if c is not None), key=lambda c: c.name)

    def delete(self, name: str) -> None:
        client, blobs = self.connected()
        collection = self.reopen(name)
        with self._lock:
            self._cache.pop(name, None)
        with milvus_errors(name):
            client.drop_alias(physical_name(name))
            client.drop_collection(collection.table)
        blobs.delete(whitening_blob(name, collection.generation) + "#")
        if collection.config.thumbnail_size:
            blobs.delete(thumbnail_blob(name, ""))  # every thumbnail of the collection

    def close(self) -> None:
        self._stop.set()
        if self.guard is not None:
            self.guard.client.close()
