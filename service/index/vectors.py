"""Vectors entering a collection: checks, normalisation and PCA-whitening, shared by both stores."""

from __future__ import annotations

import faiss
import numpy as np

from offshelf.service.errors import FailedPrecondition, InvalidArgument
from offshelf.service.index.config import CollectionConfig, Metric

MAX_NORM = 1e18  # its square, and sums of such squares, stay within float32


def prepare(vectors: np.ndarray, config: CollectionConfig) -> np.ndarray:
    """Checks vectors against the collection and L2-normalises them for an inner-product collection."""
    dim = config.binding.dim
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InvalidArgument(f"vectors of collection {config.name!r} have {dim} values; got {vectors.shape[-1]}")
    if not np.isfinite(vectors).all():
        raise InvalidArgument("a vector holds NaN or infinity")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)  # float64: no overflow
    if (norms > MAX_NORM).any():
        raise InvalidArgument(
            f"vector {int(np.argmax(norms))} is too large (norm over {MAX_NORM:g}: its distances overflow float32); "
            "scale it down"
        )
    if config.metric == Metric.INNER_PRODUCT:
        if (norms == 0).any():
            raise InvalidArgument(f"vector {int(np.argmin(norms))} is all zeros and cannot be normalised")
        vectors = (vectors / norms).astype(np.float32)
    return vectors


Whitening = tuple[np.ndarray, np.ndarray]  # x -> x @ A.T + b


def check_whitening(dim: int, config: CollectionConfig, count: int, source: str = "") -> int:
    """The whitening's output dimension (0: the full one), checked against the collection and the `count` vectors it
    is learned from (those of collection `source` when given)."""
    full = config.binding.dim
    dim = dim or full
    if not 1 <= dim <= full:
        raise InvalidArgument(f"whitening dim must be in 1..{full}")
    if count <= dim:
        raise FailedPrecondition(
            f"whitening to {dim} dimensions needs more than {dim} vectors; collection "
            f"{(source or config.name)!r} has {count}: add more or ask for a smaller dim"
        )
    return dim


def learn_whitening(vectors: np.ndarray, dim: int) -> Whitening:
    """PCA-whitening to `dim` dimensions, learned from the vectors."""
    pca = faiss.PCAMatrix(vectors.shape[1], dim, -0.5)
    pca.train(np.ascontiguousarray(vectors, np.float32))
    return faiss.vector_to_array(pca.A).reshape(dim, vectors.shape[1]), faiss.vector_to_array(pca.b)


def to_index_space(vectors: np.ndarray, whitening: Whitening | None, config: CollectionConfig) -> np.ndarray:
    """What the index holds for these vectors: whitened (and L2-normalised again for inner product) or as given."""
    if whitening is not None:
        a, b = whitening
        vectors = vectors @ a.T + b
        if config.metric == Metric.INNER_PRODUCT:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(vectors, np.float32)
