"""Domain shift: how far recent query embeddings have moved from the embeddings a collection holds or a head
was trained on. Features that worked on the reference data can fail quietly on a new domain; this makes it
visible as a metric.

The measure is the cosine distance between the two means (0: same direction; it grows as the query
distribution moves away). Recent queries are an exponential moving average over about `window` vectors.
"""

from __future__ import annotations

import threading

import numpy as np


class DriftMonitor:
    def __init__(self, window: int = 200):
        self.window = window
        self._recent: np.ndarray | None = None
        self._seen = 0
        self._lock = threading.Lock()

    def observe(self, vectors: np.ndarray) -> None:
        """Adds query embeddings, each L2-normalised (every query counts the same)."""
        vectors = np.asarray(vectors, np.float64)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        with self._lock:
            # recent <- (1 - w) recent + w v for each vector in turn, in one step: w is 1/seen (a plain mean)
            # until the window fills, then 1/window; each vector is then scaled by what the later ones keep.
            weights = np.maximum(1.0 / (self._seen + np.arange(1, len(vectors) + 1)), 1.0 / self.window)
            keep = 1.0 - weights
            kept_after = np.append(np.cumprod(keep[::-1])[::-1][1:], 1.0)
            previous = 0.0 if self._recent is None else np.prod(keep) * self._recent
            self._recent = previous + (weights * kept_after) @ vectors
            self._seen += len(vectors)

    def shift(self, reference_mean: np.ndarray | None) -> float | None:
        """Cosine distance between the recent queries' mean and reference_mean; None before any query."""
        with self._lock:
            recent = self._recent
        if recent is None or reference_mean is None:
            return None
        norms = np.linalg.norm(recent) * np.linalg.norm(reference_mean)
        if norms == 0:
            return None
        return float(1.0 - np.dot(recent, reference_mean) / norms)
