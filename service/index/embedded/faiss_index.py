"""FAISS index construction and search parameters per index type; FAISS's own classes throughout."""

from __future__ import annotations

import faiss
import numpy as np

from offshelf.service.index.config import CollectionConfig, Metric


def faiss_metric(config: CollectionConfig) -> int:
    return faiss.METRIC_L2 if config.metric == Metric.L2 else faiss.METRIC_INNER_PRODUCT


def new_index(config: CollectionConfig, dim: int, trained_ivfpq: faiss.Index | None = None) -> faiss.Index:
    """An empty index taking caller ids. An ivfpq collection is exact (flat) until it is trained."""
    metric = faiss_metric(config)
    if config.index_type == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, config.hnsw.m, metric)
        hnsw.hnsw.efConstruction = config.hnsw.ef_construction
        return faiss.IndexIDMap2(hnsw)
    if config.index_type == "ivfpq" and trained_ivfpq is not None:
        return faiss.clone_index(trained_ivfpq)
    return faiss.IndexIDMap2(faiss.IndexFlat(dim, metric))


def train_ivfpq(config: CollectionConfig, vectors: np.ndarray) -> faiss.Index:
    """An empty, trained IndexIVFPQ (slow: k-means over the vectors)."""
    ivf = config.ivfpq
    quantizer = faiss.IndexFlat(vectors.shape[1], faiss_metric(config))
    index = faiss.IndexIVFPQ(quantizer, vectors.shape[1], ivf.nlist, ivf.m, ivf.nbits, faiss_metric(config))
    index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1  # train_size is the caller's
    index.train(vectors)
    return index


def search_params(
    config: CollectionConfig, trained: bool, ef_search: int, nprobe: int, removed: faiss.IDSelector | None
) -> faiss.SearchParameters | None:
    if config.index_type == "hnsw":
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in faiss's stubs
        params.efSearch = ef_search or config.hnsw.ef_search
    elif config.index_type == "ivfpq" and trained:
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe or config.ivfpq.nprobe
    elif removed is None:
        return None
    else:
        params = faiss.SearchParameters()
    if removed is not None:
        params.sel = removed
    return params
