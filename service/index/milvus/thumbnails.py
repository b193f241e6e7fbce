"""A Milvus collection's thumbnails (collections created with thumbnail_size), kept in the blobs table every
replica reads as ``thumbnails/<collection>/<id>``; collections without thumbnails never touch it."""

from __future__ import annotations

from collections.abc import Sequence

from offshelf.service.index.config import CollectionConfig
from offshelf.service.index.milvus.blobs import Blobs


def thumbnail_blob(collection: str, item_id: str) -> str:
    return f"thumbnails/{collection}/{item_id}"


class Thumbnails:
    def __init__(self, blobs: Blobs, config: CollectionConfig):
        self.blobs = blobs
        self.name = config.name
        self.kept = config.thumbnail_size > 0

    def put(self, ids: Sequence[str], thumbnails: Sequence[bytes]) -> None:
        """Each item's thumbnail; an item written without one (b"") loses the one it had."""
        if not self.kept:
            return
        pairs = list(zip(ids, thumbnails or [b""] * len(ids), strict=True))
        self.blobs.put_small({thumbnail_blob(self.name, i): jpeg for i, jpeg in pairs if jpeg})
        self.blobs.delete_small([thumbnail_blob(self.name, i) for i, jpeg in pairs if not jpeg])

    def get(self, ids: Sequence[str]) -> dict[str, bytes]:
        if not self.kept:
            return {}
        names = {thumbnail_blob(self.name, i): i for i in ids}
        return {names[name]: jpeg for name, jpeg in self.blobs.get_small(list(names)).items()}

    def forget(self, ids: Sequence[str]) -> None:
        if self.kept:
            self.blobs.delete_small([thumbnail_blob(self.name, i) for i in ids])
