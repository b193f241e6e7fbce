"""Alpha query expansion (αQE; Radenović, Tolias & Chum, TPAMI 2018): the query is searched again as itself plus
its first search's top n hits, each weighted by its similarity to the query raised to alpha, so that views of the
object the query's neighbours agree on pull the ranking towards them. Only for inner-product collections, whose
scores are cosine similarities. Database-side augmentation (Collection.augment) is the same arithmetic applied to
every stored vector with its own nearest items.

The hits are combined as stored (before any whitening, which the second search applies again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

MAX_EXPANSION = 50  # hits averaged into a query, at most
DEFAULT_ALPHA = 3.0
Hits = list[tuple[str, float]]  # (item id, score), best first


def neighbours(hits: Hits, own_id: str | None, n: int) -> Hits:
    """The top n hits but the queried item itself (a search by id finds it first)."""
    return [(item_id, score) for item_id, score in hits if item_id != own_id][:n]


def expand(
    queries: np.ndarray,
    hits: Sequence[Hits],
    own_ids: Sequence[str | None],
    n: int,
    alpha: float,
    stored: Callable[[list[str]], dict[str, np.ndarray]],
) -> np.ndarray:
    """The expanded queries, L2-normalised. stored: the stored vectors of item ids (gone ones left out)."""
    chosen = [neighbours(row, own, n) for row, own in zip(hits, own_ids, strict=True)]
    vectors = stored(sorted({item_id for row in chosen for item_id, _ in row}))
    expanded = []
    for query, row in zip(queries, chosen, strict=True):
        total = query.astype(np.float64) / max(float(np.linalg.norm(query)), 1e-12)
        for item_id, score in row:
            if item_id in vectors:
                vector = vectors[item_id].astype(np.float64)
                total += max(score, 0.0) ** alpha * vector / max(float(np.linalg.norm(vector)), 1e-12)
        expanded.append(total / max(float(np.linalg.norm(total)), 1e-12))
    return np.asarray(expanded, np.float32)
