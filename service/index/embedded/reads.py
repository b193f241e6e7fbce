"""What an embedded collection answers from SQLite alone: items by id, pages, labelled vectors, thumbnails, filter
checks."""

from __future__ import annotations

import json

import numpy as np

from offshelf.service.errors import InvalidArgument
from offshelf.service.index.contract import Filter, Row, StoreBase
from offshelf.service.index.embedded.store import ItemStore, from_blobs


class StoredReads(StoreBase):
    """The reads of a collection that need no index; Collection adds the index and the writes."""

    store: ItemStore

    def labelled_vectors(self) -> tuple[np.ndarray, list[str]]:
        """The vectors and labels of every labelled item (for training heads)."""
        chunks = list(self.store.scan(self.dim, Filter(labelled=True)))
        if not chunks:
            return np.zeros((0, self.dim), np.float32), []
        return np.concatenate([c[1] for c in chunks]), [label for c in chunks for label in c[2]]

    def stored_vectors(self) -> np.ndarray:
        """Every item's vector as stored, (count, dim)."""
        return np.concatenate([vectors for _, vectors, _ in self.store.scan(self.dim)] or [np.zeros((0, self.dim))])

    def get(self, item_ids: list[str]) -> dict[str, tuple[Row, np.ndarray]]:
        return self.store.by_ids(item_ids, self.dim)

    def page(self, after_id: str, size: int, where: Filter, with_vectors: bool) -> list[tuple[Row, np.ndarray | None]]:
        """Up to `size` items in id order after `after_id`, with their vectors when asked."""
        rows = self.store.page(after_id, size, where, with_vectors)
        vectors = from_blobs([r[4] for r in rows], self.dim) if with_vectors else [None] * len(rows)
        return [(Row(r[0], r[1], r[2], json.loads(r[3])), vector) for r, vector in zip(rows, vectors, strict=True)]

    def all_rows(self, size: int = 4096):
        """Every item, (id, internal, label, metadata JSON, vector) rows, a page at a time."""
        after = ""
        while page := self.store.page(after, size, Filter(), with_vectors=True):
            yield [(r[0], r[1], r[2], r[3], from_blobs([r[4]], self.dim)[0]) for r in page]
            after = page[-1][0]

    def thumbnails(self, item_ids: list[str]) -> dict[str, bytes]:
        return self.store.thumbnails(item_ids)

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
