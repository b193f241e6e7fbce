"""Retrieval evaluation through the service: UKBench N-S score and INRIA Holidays mAP.

Both index the dataset into a temporary collection (deleted afterwards), query it, and
score the rankings. They take the full public datasets, or any folder with their layout.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from offshelf.clients.client import Client

QUERY_BATCH = 32  # image queries per SearchBatch: at most the server's max_images_per_request (64 by default)


@dataclass
class Dataset:
    paths: list[pathlib.Path]
    groups: list[int]  # images of one object or scene share a group
    queries: list[int]  # indexes into paths


@dataclass
class Result:
    name: str
    score: float
    per_query: list[float] = field(default_factory=list)
    precision_recall: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def _numbered(folder: pathlib.Path, pattern: str) -> list[tuple[int, pathlib.Path]]:
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(pattern, p.name)))
    if not found:
        raise FileNotFoundError(f"{folder} holds no file named like {pattern}")
    return found


def ukbench(folder: pathlib.Path) -> Dataset:
    """ukbenchNNNNN.jpg; images 4k..4k+3 show object k; every image is a query."""
    found = _numbered(folder, r"ukbench(\d{5})\.jpg")
    return Dataset([p for _, p in found], [n // 4 for n, _ in found], list(range(len(found))))


def holidays(folder: pathlib.Path) -> Dataset:
    """NNNNNN.jpg; group = NNNNNN // 100; the first image of each group is its query."""
    found = _numbered(folder, r"(\d{6})\.jpg")
    groups = [n // 100 for n, _ in found]
    queries = [i for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
    return Dataset([p for _, p in found], groups, queries)


@contextlib.contextmanager
def temporary_collection(client: Client, dataset: Dataset, model: str, output: str, index_type: str) -> Iterator[str]:
    name = f"eval-{uuid.uuid4().hex[:12]}"
    client.create_collection(name, model=model, output=output, index_type=index_type)
    try:
        client.add_images(
            name,
            dataset.paths,
            ids=[str(i) for i in range(len(dataset.paths))],
            labels=[str(g) for g in dataset.groups],
        )
        yield name
    finally:
        client.delete_collection(name)


def _rankings(
    client: Client, collection: str, dataset: Dataset, k: int, flip: bool, desc: str, qe: int = 0
) -> list[list[int]]:
    """The top k item indexes of every query, asked in batches (by image with flip, else by indexed id), with alpha
    query expansion over qe hits."""
    rankings: list[list[int]] = []
    with tqdm(total=len(dataset.queries), unit="query", desc=desc) as bar:
        for start in range(0, len(dataset.queries), QUERY_BATCH):
            batch = dataset.queries[start : start + QUERY_BATCH]
            if flip:
                images = [dataset.paths[q] for q in batch]
                hits = client.search_batch(collection, images=images, k=k, flip=True, query_expansion=qe)
            else:
                hits = client.search_batch(collection, ids=[str(q) for q in batch], k=k, query_expansion=qe)
            rankings += [[int(h.id) for h in row] for row in hits]
            bar.update(len(batch))
    return rankings


def ns_score(client: Client, collection: str, dataset: Dataset, flip: bool = False, qe: int = 0) -> Result:
    """Mean number of the query's group among its top 4, the query included (at most 4)."""
    rankings = _rankings(client, collection, dataset, 4, flip, "UKBench N-S", qe)
    per_query = [
        float(sum(dataset.groups[i] == dataset.groups[q] for i in top))
        for q, top in zip(dataset.queries, rankings, strict=True)
    ]
    return Result("UKBench N-S", float(np.mean(per_query)), per_query)


def mean_average_precision(
    client: Client, collection: str, dataset: Dataset, flip: bool = False, max_k: int = 1000, qe: int = 0
) -> Result:
    """Holidays mAP: the query is removed from its own ranking; AP is the mean precision at each relevant rank."""
    result = Result("Holidays mAP", 0.0)
    k = min(len(dataset.paths), max_k)
    rankings = _rankings(client, collection, dataset, k, flip, "Holidays mAP", qe)
    for q, ranking in zip(dataset.queries, rankings, strict=True):
        relevant = sum(g == dataset.groups[q] for g in dataset.groups) - 1
        if relevant == 0:
            continue
        hits = np.array([dataset.groups[i] == dataset.groups[q] for i in ranking if i != q], dtype=float)
        found = np.cumsum(hits)
        precision = found / np.arange(1, len(hits) + 1)
        result.per_query.append(float((precision * hits).sum() / relevant))
        result.precision_recall.append((precision, found / relevant))
    result.score = float(np.mean(result.per_query))
    return result


def plot(result: Result, path: pathlib.Path) -> None:
    """Writes a PNG: the distribution of per-query N-S, or the precision-recall curves and their mean."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise RuntimeError("--plot needs matplotlib: pip install 'offshelf[plot]'") from err
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    if result.precision_recall:
        grid = np.linspace(0, 1, 101)
        curves = []
        for precision, recall in result.precision_recall:
            # interpolated precision: the best precision at this recall or beyond
            best = np.maximum.accumulate(precision[::-1])[::-1]
            curves.append([best[recall >= r].max() if (recall >= r).any() else 0.0 for r in grid])
            axes.plot(recall, precision, color="0.85", linewidth=0.6)
        axes.plot(grid, np.mean(curves, axis=0), color="C0", linewidth=2, label="mean (interpolated)")
        axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        axes.legend(loc="lower left")
    else:
        counts = np.bincount(np.asarray(result.per_query, dtype=int), minlength=5)
        axes.bar(range(5), counts, color="C0")
        axes.set(xlabel="images of the query's object in its top 4", ylabel="queries", xticks=range(5))
    axes.set_title(f"{result.name} = {result.score:.3f} over {len(result.per_query)} queries")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
