"""A search of one Milvus table, and the text forms its filters and raw vectors take."""

from __future__ import annotations

import base64

import numpy as np
from pymilvus import MilvusClient

from offshelf.service.index.config import CollectionConfig, Metric
from offshelf.service.index.contract import Filter, Hit
from offshelf.service.index.milvus.calls import milvus_errors, quoted
from offshelf.service.index.vectors import Whitening, to_index_space


def expression(where: Filter) -> str:
    """The filter as a Milvus boolean expression ("" selects everything)."""
    clauses = ['label != ""'] if where.labelled else []
    if where.labels:
        clauses.append(f"label in [{', '.join(map(quoted, where.labels))}]")
    for name, values in where.metadata:
        clauses.append(f"metadata[{quoted(name)}] in [{', '.join(map(quoted, values))}]")
    return both(*clauses)


def both(*clauses: str) -> str:
    return " and ".join(f"({c})" for c in clauses if c)


def to_text(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, "<f4").tobytes()).decode()


def from_text(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4").astype(np.float32)


def search(
    client: MilvusClient,
    table: str,
    config: CollectionConfig,
    whitening: Whitening | None,
    consistency: str,
    queries: np.ndarray,
    k: int,
    ef_search: int,
    nprobe: int,
    where: Filter,
) -> list[list[Hit]]:
    """One Milvus search of a table; IVF_PQ's refine_factor x k candidates re-ranked by their exact scores."""
    queries = to_index_space(queries, whitening, config)
    refine = config.ivfpq.refine_factor if config.index_type == "ivfpq" else 1
    params: dict[str, int] = {}
    if config.index_type == "hnsw":
        params["ef"] = max(ef_search or config.hnsw.ef_search, k)
    elif config.index_type == "ivfpq":
        params["nprobe"] = nprobe or config.ivfpq.nprobe
    with milvus_errors(config.name):
        results = client.search(
            table,
            data=queries.tolist(),
            limit=min(k * refine, 16384),
            filter=expression(where),
            output_fields=["label", "metadata", *(["raw"] if refine > 1 else [])],
            search_params={"params": params},
            consistency_level=consistency,
        )
    answers = []
    for query, hits in zip(queries, results, strict=True):
        ranked = [(float(hit["distance"]), hit) for hit in hits]
        if refine > 1 and ranked:
            ranked = rerank(query, [hit for _, hit in ranked], whitening, config)
        answers.append(
            [(hit["id"], score, hit["entity"]["label"], hit["entity"]["metadata"]) for score, hit in ranked[:k]]
        )
    return answers


def rerank(
    query: np.ndarray, hits: list[dict], whitening: Whitening | None, config: CollectionConfig
) -> list[tuple[float, dict]]:
    """The candidates by exact score in the index's space: inner product, or squared L2 distance (lower first)."""
    added = np.stack([from_text(hit["entity"]["raw"]) for hit in hits])
    vectors = to_index_space(added, whitening, config)
    if config.metric == Metric.L2:
        scores = ((vectors - query) ** 2).sum(axis=1)
        order = np.argsort(scores, kind="stable")
    else:
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")
    return [(float(scores[i]), hits[i]) for i in order]
