"""The collection registry: every collection under the data folder, opened before the server is ready, and the
background thread that saves their FAISS indexes."""

from __future__ import annotations

import logging
import pathlib
import shutil
import threading
import uuid

import faiss

from offshelf.service.errors import AlreadyExists, NotFound, Unavailable
from offshelf.service.index.config import CollectionConfig
from offshelf.service.index.embedded.collection import Collection
from offshelf.service.index.embedded.migrate import migrate, needs_migration
from offshelf.service.index.embedded.store import DATABASE
from offshelf.service.logs import fields
from offshelf.service.periodic import every

log = logging.getLogger(__name__)


class CollectionRegistry:
    def __init__(self, data_dir: pathlib.Path, index_save_seconds: float, faiss_threads: int):
        if faiss_threads:
            faiss.omp_set_num_threads(faiss_threads)
        self.root = data_dir / "collections"
        self.index_save_seconds = index_save_seconds
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()
        self._loaded = False
        self._stop = threading.Event()
        self._saver: threading.Thread | None = None

    def load_all(self) -> None:
        """Restores every collection; raises CollectionLoadError if one cannot be restored consistently."""
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in [*self.root.glob(".deleting-*"), *self.root.glob(".creating-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        for directory in sorted(self.root.iterdir()):
            if directory.is_dir() and needs_migration(directory):
                migrate(directory)
            if directory.is_dir() and (directory / DATABASE).exists():
                collection = Collection.open(directory)
                self._collections[collection.name] = collection
        self._loaded = True
        self._saver = every(self.index_save_seconds, self._save_indexes, self._stop, "index-saver")

    def _save_indexes(self) -> None:
        """Saves the index of each collection with writes its index file lacks."""
        for collection in self.all():
            if collection.unsaved_writes and not collection.closed:
                try:
                    collection.save_index()
                except Exception:  # the database holds every write; the next try or the next start catches up
                    log.exception("saving an index failed", extra=fields(collection=collection.name))

    def create(self, config: CollectionConfig) -> Collection:
        self._check_loaded()
        with self._lock:
            if config.name in self._collections:
                raise AlreadyExists(f"collection {config.name!r} exists; delete it first or pick another name")
            leftover = self.root / config.name
            if leftover.exists():  # a folder no collection was opened from (no database in it): kept aside
                aside = self.root / f".orphaned-{config.name}-{uuid.uuid4().hex[:8]}"
                leftover.rename(aside)
                log.warning("a folder without a collection database was moved aside", extra=fields(path=str(aside)))
            collection = Collection.create(self.root / config.name, config)
            self._collections[config.name] = collection
            return collection

    def get(self, name: str) -> Collection:
        self._check_loaded()
        with self._lock:
            collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"no collection named {name!r}; ListCollections lists them")
        return collection

    def _check_loaded(self) -> None:
        if not self._loaded:
            raise Unavailable("the server is still restoring its collections; retry when health reports SERVING")

    def all(self) -> list[Collection]:
        with self._lock:
            return [self._collections[name] for name in sorted(self._collections)]

    def delete(self, name: str) -> None:
        """The name is free again only once its folder is out of the way, so a create racing it cannot collide."""
        with self._lock:
            collection = self._collections.pop(name, None)
            if collection is None:
                raise NotFound(f"no collection named {name!r}; ListCollections lists them")
            collection.delete()
            doomed = self.root / f".deleting-{uuid.uuid4().hex}"
            collection.directory.rename(doomed)  # gone from the next start even if the removal below is cut short
        shutil.rmtree(doomed, ignore_errors=True)

    def close(self) -> None:
        self._stop.set()
        if self._saver is not None:
            self._saver.join()
        for collection in self.all():
            collection.close()
