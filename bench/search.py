"""Retrieval throughput, latency, recall and memory: the service's gRPC Index next to raw faiss.

Prints one table. For each index type (flat, hnsw, ivfpq, the service's defaults), the same
synthetic clustered vectors go into raw faiss (same index classes and parameters; ivfpq
re-ranks like faiss IndexRefineFlat) and into a collection of a real server through the SDK.
Usage: python bench/search.py [--vectors 100000] [--million] [--queries 2000]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from offshelf.clients import Client  # noqa: E402
from offshelf.protos.v1 import index_pb2  # noqa: E402
from offshelf.service.index.faiss_index import new_index, search_params, train_ivfpq, with_defaults  # noqa: E402

from support import ServerProcess, clustered_vectors, write_identity_model  # noqa: E402

DIM = 512
BATCH = 1000
QUERY_BATCH = 100


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def recall(truth: np.ndarray, found: list[list[int]]) -> float:
    return float(np.mean([len(set(t.tolist()) & set(f)) / len(t) for t, f in zip(truth, found, strict=True)]))


def latencies(durations: list[float]) -> tuple[float, float]:
    return float(np.percentile(durations, 50) * 1000), float(np.percentile(durations, 99) * 1000)


def raw_faiss(index_type: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    """The service's index classes and parameters, called directly in this process."""
    config = index_pb2.Collection(index_type=index_type, binding=index_pb2.Binding(dim=DIM))
    with_defaults(config)
    started = time.perf_counter()
    trained = train_ivfpq(config, data[: config.ivfpq.train_size]) if index_type == "ivfpq" else None
    index = new_index(config, DIM, trained)
    for start in range(0, len(data), BATCH):
        index.add_with_ids(data[start : start + BATCH], np.arange(start, start + len(data[start : start + BATCH])))
    add_seconds = time.perf_counter() - started
    if index_type == "ivfpq":  # exact re-ranking of refine_factor x k candidates, as the service does
        index = faiss.IndexRefineFlat(index, faiss.swig_ptr(data))
        index.k_factor = config.ivfpq.refine_factor
    params = search_params(config, trained is not None, 0, 0, None)
    if index_type == "ivfpq":
        params = faiss.IndexRefineSearchParameters(k_factor=config.ivfpq.refine_factor, base_index_params=params)
    memory = len(faiss.serialize_index(index.base_index if index_type == "ivfpq" else index)) / 2**20
    if index_type == "ivfpq":
        memory += data.nbytes / 2**20  # the refine stage keeps the vectors
    rows = {}
    for per_call in (1, QUERY_BATCH):
        durations, found = [], []
        for start in range(0, len(queries), per_call):
            t = time.perf_counter()
            _, ids = index.search(queries[start : start + per_call], 10, params=params)
            durations.append(time.perf_counter() - t)
            found += ids.tolist()
        rows[f"raw faiss, {per_call}/call"] = {
            "add": len(data) / add_seconds,
            "qps": len(queries) / sum(durations),
            "lat": latencies(durations),
            "recall": recall(truth, found),
            "memory": memory,
        }
    return rows


def through_grpc(
    server: ServerProcess, index_type: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, concurrency: int
) -> dict:
    name = f"bench-{index_type}"
    with Client(server.address, timeout=600) as client:
        before = rss_mb(server.process.pid)
        client.create_collection(name, model=f"random-projection-{DIM}", index_type=index_type)
        started = time.perf_counter()
        for start in range(0, len(data), BATCH):
            client.add(name, vectors=data[start : start + BATCH], ids=[str(i) for i in range(start, start + BATCH)])
        while index_type == "ivfpq" and not client.get_collection(name).trained:
            time.sleep(0.1)
        add_seconds = time.perf_counter() - started
        memory = rss_mb(server.process.pid) - before

        def timed_search(start: int, per_call: int) -> tuple[float, list[list[int]]]:
            t = time.perf_counter()
            if per_call == 1:
                rows = [client.search(name, vector=queries[start], k=10)]
            else:
                rows = client.search_batch(name, vectors=queries[start : start + per_call], k=10)
            return time.perf_counter() - t, [[int(h.id) for h in hits] for hits in rows]

        rows = {}
        for per_call in (1, QUERY_BATCH):
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(lambda s, n=per_call: timed_search(s, n), range(0, len(queries), per_call)))
            wall = time.perf_counter() - started
            rows[f"gRPC, {per_call}/call, {concurrency} clients"] = {
                "add": len(data) / add_seconds,
                "qps": len(queries) / wall,
                "lat": latencies([d for d, _ in results]),
                "recall": recall(truth, [f for _, found in results for f in found]),
                "memory": memory,
            }
        client.delete_collection(name)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="1,000,000 vectors")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4, help="gRPC client threads")
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--types", default="flat,hnsw,ivfpq")
    args = parser.parse_args()
    count = 1_000_000 if args.million else args.vectors
    print(f"generating {count} clustered {DIM}-d vectors ...", flush=True)
    data = clustered_vectors(count, DIM, seed=0)
    queries = data[:: max(1, count // args.queries)][: args.queries] + 0.05 * clustered_vectors(args.queries, DIM, 1)
    faiss.normalize_L2(data)
    faiss.normalize_L2(queries)
    _, truth = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)

    repo = write_identity_model(ROOT / "build" / "bench-repo", DIM)
    server = ServerProcess(repo, pathlib.Path(tempfile.mkdtemp()), drain_seconds=0)
    rows: dict[tuple[str, str], dict] = {}
    try:
        server.wait_serving()
        for index_type in args.types.split(","):
            print(f"{index_type}: raw faiss ...", flush=True)
            rows.update({(index_type, k): v for k, v in raw_faiss(index_type, data, queries, truth).items()})
            print(f"{index_type}: gRPC ...", flush=True)
            grpc_rows = through_grpc(server, index_type, data, queries, truth, args.concurrency)
            rows.update({(index_type, k): v for k, v in grpc_rows.items()})
    finally:
        server.terminate()

    print(
        f"\n{count} vectors, {DIM}-d, inner product, {len(queries)} queries, k=10, {os.cpu_count()} CPUs, "
        f"faiss {faiss.__version__}; add = vectors/s of inserting everything (ivfpq: training included)\n"
    )
    print("| index | path                         | add vec/s | search QPS | p50 ms | p99 ms | recall@10 | memory MB |")
    print("|-------|------------------------------|-----------|------------|--------|--------|-----------|-----------|")
    for (index_type, path), r in rows.items():
        print(
            f"| {index_type:<5} | {path:<28} | {r['add']:9.0f} | {r['qps']:10.0f} | {r['lat'][0]:6.2f} | "
            f"{r['lat'][1]:6.2f} | {r['recall']:9.3f} | {r['memory']:9.0f} |"
        )
    if any(t == "hnsw" for t, _ in rows):
        for per_call in (1, QUERY_BATCH):
            raw = rows[("hnsw", f"raw faiss, {per_call}/call")]
            served = rows[("hnsw", f"gRPC, {per_call}/call, {args.concurrency} clients")]
            print(
                f"hnsw, {per_call} queries per call: gRPC QPS = {served['qps'] / raw['qps']:.0%} of raw faiss at "
                f"recall@10 {served['recall']:.3f} (target >= 70% at recall >= 0.95)"
            )


if __name__ == "__main__":
    main()
