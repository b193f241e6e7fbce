"""The rows (id, label, metadata) of recent search hits, kept in memory by FAISS id.

Reading a hit's row from SQLite costs a one-query Search about a sixth of its server CPU: the query itself is
cheap, but sqlite3 releases the GIL on each step, and with several calls in flight every release is a thread
switch. A FAISS id is never reused and an item's row never changes under it (an upsert gives the item a new
FAISS id), so a kept row stays right until its item goes; the collection forgets those.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from offshelf.service.index.contract import Row

HIT_ROWS = 50_000  # rows kept per collection, least recently hit first out: ~10-30 MB with short metadata


class HitRows:
    def __init__(self, read: Callable[[Sequence[int]], dict[int, Row]], size: int = HIT_ROWS):
        self._read = read  # the rows of these FAISS ids from the store (absent ones left out)
        self._size = size
        self._rows: OrderedDict[int, Row] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, internals: Sequence[int]) -> dict[int, Row]:
        """The rows of these FAISS ids; ids whose items are gone are left out."""
        with self._lock:
            found = {i: self._rows[i] for i in internals if i in self._rows}
            for i in found:
                self._rows.move_to_end(i)
        missing = [i for i in internals if i not in found]
        if missing:
            read = self._read(missing)
            with self._lock:
                self._rows.update(read)
                while len(self._rows) > self._size:
                    self._rows.popitem(last=False)
            found.update(read)
        return found

    def forget(self, internals: Sequence[int]) -> None:
        """Drops the rows of items that are gone (removed, or replaced under a new FAISS id)."""
        with self._lock:
            for i in internals:
                self._rows.pop(i, None)
