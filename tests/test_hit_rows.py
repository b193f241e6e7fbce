"""The in-memory rows of recent search hits: read from the store once, bounded, forgotten when items go."""

from __future__ import annotations

from offshelf.service.index.contract import Row
from offshelf.service.index.embedded.hit_rows import HitRows


class Store:
    """The rows of FAISS ids 0-99, counting which ids each read asked for."""

    def __init__(self) -> None:
        self.reads: list[list[int]] = []
        self.gone: set[int] = set()

    def rows(self, internals):
        self.reads.append(list(internals))
        return {i: Row(f"item-{i}", i, "label", {"n": str(i)}) for i in internals if i < 100 and i not in self.gone}


def test_rows_are_read_once_and_absent_ids_are_left_out():
    store = Store()
    hits = HitRows(store.rows)
    assert sorted(hits.rows([1, 2, 500])) == [1, 2]
    assert hits.rows([2, 3])[2].id == "item-2"
    assert store.reads == [[1, 2, 500], [3]]


def test_the_least_recently_hit_rows_go_first_when_full():
    store = Store()
    hits = HitRows(store.rows, size=3)
    hits.rows([1, 2, 3])
    hits.rows([1])  # 1 is now the most recent
    hits.rows([4])  # 2 goes
    store.reads.clear()
    hits.rows([1, 2, 3, 4])
    assert store.reads == [[2]]


def test_forgotten_rows_are_read_again():
    store = Store()
    hits = HitRows(store.rows)
    hits.rows([7, 8])
    store.gone.add(7)
    hits.forget([7])
    assert sorted(hits.rows([7, 8])) == [8]
