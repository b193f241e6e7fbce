"""Responses bounded before they are built: a small request can ask for a large response (1,000 id queries x k=10
over items with 16 KiB of metadata made a 161 MB SearchBatch response and +570 MB of RSS before gRPC refused to
send it). The rows are already in memory when these checks run (shared between hits of the same item); the
messages, which copy every hit's metadata, are not built yet."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from offshelf.service.errors import InvalidArgument
from offshelf.service.index.contract import Row

FRAMING = 16  # bytes of an item's or hit's own tags and lengths (and score): a little more than protobuf uses


def text_bytes(label: str, metadata: Mapping[str, str]) -> int:
    """An item's label and metadata, in bytes of the response (with the framing of each entry)."""
    return len(label.encode()) + sum(len(k.encode()) + len(v.encode()) + 6 for k, v in metadata.items())


def hits_bytes(rows: Iterable[Iterable[tuple[str, float, str, Mapping[str, str]]]]) -> int:
    """A Search or SearchBatch response: each hit's id, score, label and metadata."""
    return sum(
        FRAMING + len(item_id.encode()) + text_bytes(label, metadata)
        for row in rows
        for item_id, _, label, metadata in row
    )


def items_bytes(rows: Iterable[Row], dim: int) -> int:
    """A GetItems or ListItems response: each item's id, label and metadata, and its vector when dim (0: without)."""
    return sum(FRAMING + len(row.id.encode()) + text_bytes(row.label, row.metadata) + vector_bytes(dim) for row in rows)


def vector_bytes(dim: int) -> int:
    return 4 * dim + 8 if dim else 0


class ResponseLimit:
    """--max-response-bytes: a response larger is refused INVALID_ARGUMENT, naming the limit and what to ask for."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def check(self, size: int, what: str, fix: str) -> None:
        if size > self.max_bytes:
            raise InvalidArgument(
                f"the response would be {size / 2**20:.1f} MiB ({what}), more than the limit of "
                f"{self.max_bytes / 2**20:.1f} MiB (--max-response-bytes); {fix}"
            )
