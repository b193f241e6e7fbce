"""The collections of a Milvus server: every replica pointed at the same Milvus serves the same collections.

Nothing is held that another replica could change unseen for long: a collection's configuration is read from
Milvus and kept CONFIG_SECONDS, the list of collections is read on every call.
"""

from __future__ import annotations

import logging
import threading
import time

from google.protobuf import json_format
from pymilvus import MilvusClient, MilvusException

from offshelf.protos.v1 import index_pb2
from offshelf.service.errors import AlreadyExists, CollectionLoadError, NotFound, Unavailable
from offshelf.service.index.milvus import PREFIX, MilvusCollection, milvus_errors, physical_name

log = logging.getLogger(__name__)
CONFIG_SECONDS = 5.0
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its errors reach the caller as statuses, once


def connect(uri: str, token: str, ca_file: str) -> MilvusClient:
    """A client of the Milvus at `uri`; CollectionLoadError when it does not answer."""
    try:
        return MilvusClient(uri=uri, token=token, timeout=30, **({"server_pem_path": ca_file} if ca_file else {}))
    except (MilvusException, OSError) as err:
        raise CollectionLoadError(
            f"cannot reach Milvus at {uri} ({getattr(err, 'message', err)}); check OFFSHELF_MILVUS_URI, "
            "OFFSHELF_MILVUS_TOKEN and that Milvus is running"
        ) from err


class MilvusCollectionRegistry:
    def __init__(self, uri: str, token: str, ca_file: str, consistency: str):
        self.uri, self.token, self.ca_file = uri, token, ca_file
        self.consistency = consistency
        self.client: MilvusClient | None = None
        self._cache: dict[str, tuple[float, MilvusCollection]] = {}
        self._lock = threading.Lock()

    def load_all(self) -> None:
        self.client = connect(self.uri, self.token, self.ca_file)
        log.info("collections on Milvus", extra={"uri": self.uri, "collections": len(self._names())})

    def _client(self) -> MilvusClient:
        if self.client is None:
            raise Unavailable("the server is still connecting to Milvus; retry when health reports SERVING")
        return self.client

    def _names(self) -> list[str]:
        with milvus_errors("*"):
            return [name for name in self._client().list_collections() if name.startswith(PREFIX)]

    def _open(self, table: str) -> MilvusCollection | None:
        """The collection stored as `table`, or None when it is gone or not one of offshelf's."""
        try:
            description = self._client().describe_collection(table)["description"]
            return MilvusCollection(self._client(), MilvusCollection.config_of(description), self.consistency)
        except (MilvusException, json_format.ParseError):  # gone meanwhile, or not offshelf's configuration
            return None

    def create(self, config: index_pb2.Collection) -> MilvusCollection:
        client = self._client()
        with milvus_errors(config.name):
            if client.has_collection(physical_name(config.name)):
                raise AlreadyExists(f"collection {config.name!r} exists; delete it first or pick another name")
        collection = MilvusCollection.create(client, config, self.consistency)
        with self._lock:
            self._cache[config.name] = (time.monotonic(), collection)
        return collection

    def get(self, name: str) -> MilvusCollection:
        with self._lock:
            cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < CONFIG_SECONDS:
            return cached[1]
        collection = self._open(physical_name(name))
        with self._lock:
            if collection is None:
                self._cache.pop(name, None)
                raise NotFound(f"no collection named {name!r}; ListCollections lists them")
            self._cache[name] = (time.monotonic(), collection)
        return collection

    def all(self) -> list[MilvusCollection]:
        collections = [c for c in map(self._open, self._names()) if c is not None]
        return sorted(collections, key=lambda c: c.name)

    def delete(self, name: str) -> None:
        collection = self.get(name)
        with self._lock:
            self._cache.pop(name, None)
        collection.delete()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
