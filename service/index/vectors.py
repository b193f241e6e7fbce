"""Checks on vectors entering a collection, shared by both stores."""

from __future__ import annotations

import numpy as np

from offshelf.protos.v1 import index_pb2
from offshelf.service.errors import InvalidArgument


def prepare(vectors: np.ndarray, config: index_pb2.Collection) -> np.ndarray:
    """Checks vectors against the collection and L2-normalises them for an inner-product collection."""
    dim = config.binding.dim
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InvalidArgument(f"vectors of collection {config.name!r} have {dim} values; got {vectors.shape[-1]}")
    if not np.isfinite(vectors).all():
        raise InvalidArgument("a vector holds NaN or infinity")
    if config.metric == index_pb2.METRIC_INNER_PRODUCT:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InvalidArgument(f"vector {int(np.argmin(norms))} is all zeros and cannot be normalised")
        vectors = vectors / norms
    return vectors
