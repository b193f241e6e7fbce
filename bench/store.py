"""The collection store under load: Add latency as a collection grows, restart time, filtered search.

Prints markdown tables. A real server on a tiny ONNX model with a 1280-d output (the default embedding's
size), vectors added through the SDK in batches of 1,000 (clustered synthetic vectors, metadata
``bucket`` = i % 100, so a filter on buckets selects 1 %, 10 % or 100 %):

- Add p50/p99 per 1,000-item batch over the 20 batches after the collection reaches each size;
- restart time at the largest size with the index file present (caught up) and deleted (rebuilt);
- SearchBatch (100 queries, k = 10) queries/s unfiltered and with filters selecting 1 %, 10 % and 100 %.

Usage: python bench/store.py [--sizes 10000,100000,1000000] [--types flat,hnsw]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np
from tqdm import tqdm

from offshelf.clients import Client

from common import ServerProcess, write_identity_model

ROOT = pathlib.Path(__file__).resolve().parent.parent

DIM = 1280
BATCH = 1000
TIMED_BATCHES = 20
MODEL = f"random-projection-{DIM}"


def batch_vectors(first: int, count: int) -> np.ndarray:
    """Deterministic clustered vectors for items first .. first + count (generated per batch: no 5 GB array)."""
    rng = np.random.default_rng(first)
    centres = np.random.default_rng(0).standard_normal((64, DIM)).astype(np.float32)
    return centres[rng.integers(0, 64, count)] + 0.5 * rng.standard_normal((count, DIM)).astype(np.float32)


def add_batch(client: Client, name: str, first: int) -> float:
    vectors = batch_vectors(first, BATCH)
    started = time.perf_counter()
    client.add(
        name,
        vectors=vectors,
        ids=[f"item{i:08d}" for i in range(first, first + BATCH)],
        metadata=[{"bucket": str(i % 100)} for i in range(first, first + BATCH)],
    )
    return time.perf_counter() - started


def grow(client: Client, name: str, sizes: list[int]) -> list[dict]:
    """Adds batches up to each size, then times TIMED_BATCHES more; returns a row per size."""
    rows, count = [], 0
    with tqdm(total=sizes[-1] + TIMED_BATCHES * BATCH * len(sizes), unit="item", desc=name) as bar:
        for size in sizes:
            while count < size:
                add_batch(client, name, count)
                count += BATCH
                bar.update(BATCH)
            durations = []
            for _ in range(TIMED_BATCHES):
                durations.append(add_batch(client, name, count))
                count += BATCH
                bar.update(BATCH)
            p50, p99 = np.percentile(durations, [50, 99]) * 1000
            rows.append({"collection": name, "items": size, "add_p50_ms": p50, "add_p99_ms": p99})
    return rows


def restart_seconds(repo: pathlib.Path, data: pathlib.Path, drop_index: bool) -> float:
    if drop_index:
        for path in data.glob("collections/*/index-*.faiss"):
            path.unlink()
    started = time.perf_counter()
    server = ServerProcess(repo, data, drain_seconds=0)
    try:
        server.wait_serving(timeout=3600)
        return time.perf_counter() - started
    finally:
        server.terminate(timeout=600)


def search_qps(client: Client, name: str, buckets: int | None, seconds: float = 5.0) -> float:
    queries = batch_vectors(10**9, 100)
    metadata = {"bucket": [str(b) for b in range(buckets)]} if buckets else None
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        client.search_batch(name, vectors=queries, k=10, metadata=metadata)
        done += len(queries)
    return done / (time.perf_counter() - started)


def table(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def filtered_search_row(client: Client, name: str) -> dict:
    row = {
        "collection": name,
        "items": client.get_collection(name).count,
        "unfiltered_qps": search_qps(client, name, None),
    }
    for buckets in (1, 10, 100):
        row[f"filter_{buckets}%_qps"] = search_qps(client, name, buckets)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="collection sizes to time Add at")
    parser.add_argument("--types", default="flat,hnsw", help="index types, each its own collection")
    parser.add_argument(
        "--data", type=pathlib.Path, help="a data folder this script filled before: skip the adds, time the rest"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    repo = write_identity_model(ROOT / "build" / "bench-repo", DIM)
    data = args.data or pathlib.Path(tempfile.mkdtemp(prefix="offshelf-store-", dir=ROOT / "build"))
    server = ServerProcess(repo, data, drain_seconds=0)
    adds, searches = [], []
    try:
        server.wait_serving(timeout=3600)
        with Client(server.address, timeout=600) as client:
            for index_type in args.types.split(","):
                if args.data is None:
                    client.create_collection(index_type, model=MODEL, index_type=index_type)
                    adds += grow(client, index_type, sizes)
                searches.append(filtered_search_row(client, index_type))
    finally:
        server.terminate(timeout=600)
    restarts = [
        {"start": "index files present (caught up)", "seconds": restart_seconds(repo, data, drop_index=False)},
        {"start": "index files deleted (rebuilt)", "seconds": restart_seconds(repo, data, drop_index=True)},
    ]
    if adds:
        print("\n## Add latency per 1,000-item batch (1280-d)\n")
        print(table(adds))
    total = sum(row["items"] for row in searches)
    print(f"\n## Restart with {len(searches)} collections, {total} items in all\n")
    print(table(restarts))
    print("\n## SearchBatch (100 queries, k = 10) by filter selectivity\n")
    print(table(searches))


if __name__ == "__main__":
    main()
