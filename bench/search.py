"""Retrieval throughput, latency, recall and memory: the service's gRPC Index next to raw faiss.

Prints one table. For each index type (flat, hnsw, ivfpq, the service's defaults), the same
synthetic clustered vectors go into raw faiss (same index classes and parameters; ivfpq
re-ranks like faiss IndexRefineFlat) and into a collection of a real server through the SDK,
on each backend of --backends: the embedded store (SQLite+FAISS) and Milvus (a real Milvus
standalone started here, time tick 200 ms as in production, and an offshelf server with
OFFSHELF_MILVUS_URI). Milvus builds HNSW and IVF_PQ only on sealed segments: the bench flushes
after adding, waits until every row is indexed and loaded in sealed segments, and reports that wait as "index s".
Milvus searches run with Bounded consistency (the service's default: writes are acknowledged
once Milvus serves them, so Bounded searches see them) and again through a second replica with
OFFSHELF_MILVUS_CONSISTENCY=Strong. For ivfpq on Milvus a second collection with refine_factor=1
(no exact re-ranking of candidates fetched with their vectors) adds Bounded rows.
--visibility adds a read-after-write measurement across two replicas (bench/visibility.py).
Usage: python bench/search.py [--vectors 100000] [--million] [--queries 2000]
                              [--backends embedded,milvus] [--visibility]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from offshelf.clients import Client
from offshelf.service.index.config import CollectionConfig
from offshelf.service.index.embedded.faiss_index import new_index, search_params, train_ivfpq
from offshelf.service.index.milvus.collection import physical_name
from offshelf.service.index.parameters import with_defaults
from offshelf.service.models.binding import Binding

from common import MilvusProcess, ServerProcess, clustered_vectors, write_identity_model

ROOT = pathlib.Path(__file__).resolve().parent.parent

DIM = 512
BATCH = 1000
QUERY_BATCH = 100


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (Milvus standalone is a launcher and a binary)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += rss_mb(current)
            for task in pathlib.Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def wait_milvus_indexed(uri: str, name: str, count: int, timeout: float = 3600) -> float:
    """Flushes the collection's Milvus table, then waits until all `count` rows are indexed and loaded as indexed
    sealed segments (Milvus builds HNSW/IVF_PQ only on sealed segments). Returns the seconds it took."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    started = time.perf_counter()
    try:
        table = client.describe_collection(physical_name(name)).get("collection_name") or physical_name(name)
        client.flush(table)
        index_name = client.list_indexes(table)[0]
        while time.perf_counter() - started < timeout:
            index = client.describe_index(table, index_name)
            if int(index.get("indexed_rows", 0)) >= count and int(index.get("pending_index_rows", 0)) == 0:
                loaded = client.list_loaded_segments(table)
                if sum(s.num_rows for s in loaded if str(s.state) in ("Sealed", "3")) >= count:
                    return time.perf_counter() - started
            time.sleep(0.2)
        raise RuntimeError(f"Milvus did not index {count} rows of {name!r} within {timeout} s")
    finally:
        client.close()


def recall(truth: np.ndarray, found: list[list[int]]) -> float:
    return float(np.mean([len(set(t.tolist()) & set(f)) / len(t) for t, f in zip(truth, found, strict=True)]))


def latencies(durations: list[float]) -> tuple[float, float]:
    return float(np.percentile(durations, 50) * 1000), float(np.percentile(durations, 99) * 1000)


def raw_faiss(index_type: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    """The service's index classes and parameters, called directly in this process."""
    config = CollectionConfig("bench", Binding(dim=DIM), index_type=index_type)
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
    server: ServerProcess,
    index_type: str,
    data: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    concurrency: int,
    milvus: MilvusProcess | None = None,
    strong: ServerProcess | None = None,
    ivfpq: dict[str, int] | None = None,
    label: str = "",
) -> dict:
    """Rows keyed by path. With `milvus`, the collection lives there: memory counts Milvus's processes too, `server`
    searches with the default consistency (Bounded) and `strong` (a replica on the same Milvus with Strong
    consistency) adds rows. `ivfpq` overrides the collection's IVF-PQ parameters; `label` is added to its rows."""
    name = f"bench-{index_type}{'-' + '-'.join(f'{k}{v}' for k, v in ivfpq.items()) if ivfpq else ''}"

    def memory_now() -> float:
        return rss_mb(server.process.pid) + (tree_rss_mb(milvus.process.pid) if milvus else 0.0)

    with Client(server.address, timeout=600) as client:
        before = memory_now()
        client.create_collection(name, model=f"random-projection-{DIM}", index_type=index_type, ivfpq=ivfpq)
        started = time.perf_counter()
        for start in range(0, len(data), BATCH):
            client.add(name, vectors=data[start : start + BATCH], ids=[str(i) for i in range(start, start + BATCH)])
        while index_type == "ivfpq" and milvus is None and not client.get_collection(name).trained:
            time.sleep(0.1)
        add_seconds = time.perf_counter() - started
        index_seconds = wait_milvus_indexed(milvus.uri, name, len(data)) if milvus else None
        memory = memory_now() - before

        def timed_search(searcher: Client, start: int, per_call: int) -> tuple[float, list[list[int]]]:
            t = time.perf_counter()
            if per_call == 1:
                rows = [searcher.search(name, vector=queries[start], k=10)]
            else:
                rows = searcher.search_batch(name, vectors=queries[start : start + per_call], k=10)
            return time.perf_counter() - t, [[int(h.id) for h in hits] for hits in rows]

        def measure(searcher: Client, per_call: int) -> dict:
            try:
                searcher.search(name, vector=queries[0], k=10)  # warm-up (a replica opens the collection lazily)
                started = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    results = list(
                        pool.map(lambda s: timed_search(searcher, s, per_call), range(0, len(queries), per_call))
                    )
                wall = time.perf_counter() - started
            except Exception as error:  # a failing path is reported in the table, the others still run
                print(f"{name}, {per_call}/call: {error}", flush=True)
                return {"add": len(data) / add_seconds, "index": index_seconds, "memory": memory, "error": True}
            return {
                "add": len(data) / add_seconds,
                "index": index_seconds,
                "qps": len(queries) / wall,
                "lat": latencies([d for d, _ in results]),
                "recall": recall(truth, [f for _, found in results for f in found]),
                "memory": memory,
            }

        bounded = ", Bounded" if milvus else ""
        rows = {f"gRPC, {n}/call, {concurrency} clients{bounded}{label}": measure(client, n) for n in (1, QUERY_BATCH)}
        if strong is not None:
            with Client(strong.address, timeout=600) as other:
                for n in (1, QUERY_BATCH):
                    rows[f"gRPC, {n}/call, {concurrency} clients, Strong{label}"] = measure(other, n)
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
    parser.add_argument("--backends", default="embedded,milvus", help="embedded, milvus or both")
    parser.add_argument(
        "--visibility", action="store_true", help="also Add through one replica, Search through another (Milvus)"
    )
    parser.add_argument("--trials", type=int, default=20, help="trials of --visibility per consistency")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if unknown := set(backends) - {"embedded", "milvus"}:
        parser.error(f"unknown backends {sorted(unknown)}: choose embedded and/or milvus")
    count = 1_000_000 if args.million else args.vectors
    print(f"generating {count} clustered {DIM}-d vectors ...", flush=True)
    data = clustered_vectors(count, DIM, seed=0)
    queries = data[:: max(1, count // args.queries)][: args.queries] + 0.05 * clustered_vectors(args.queries, DIM, 1)
    faiss.normalize_L2(data)
    faiss.normalize_L2(queries)
    _, truth = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)

    repo = write_identity_model(ROOT / "build" / "bench-repo", DIM)
    types = args.types.split(",")
    rows: dict[tuple[str, str, str], dict] = {}
    for index_type in types:
        print(f"{index_type}: raw faiss ...", flush=True)
        rows.update({(index_type, "raw faiss", k): v for k, v in raw_faiss(index_type, data, queries, truth).items()})
    visibility_report = ""
    if "embedded" in backends:
        server = ServerProcess(repo, pathlib.Path(tempfile.mkdtemp()), drain_seconds=0)
        try:
            server.wait_serving()
            for index_type in types:
                print(f"{index_type}: embedded, gRPC ...", flush=True)
                grpc_rows = through_grpc(server, index_type, data, queries, truth, args.concurrency)
                rows.update({(index_type, "embedded", k): v for k, v in grpc_rows.items()})
        finally:
            server.terminate()
    if "milvus" in backends:
        milvus = MilvusProcess(pathlib.Path(tempfile.mkdtemp()) / "milvus", time_tick_ms=200)
        servers: list[ServerProcess] = []
        try:
            milvus.wait_ready()
            for consistency in ({}, {"milvus_consistency": "Strong"}):  # the default (Bounded), then Strong
                servers.append(
                    ServerProcess(
                        repo, pathlib.Path(tempfile.mkdtemp()), drain_seconds=0, milvus_uri=milvus.uri, **consistency
                    )
                )
            for server in servers:
                server.wait_serving()
            for index_type in types:
                print(f"{index_type}: milvus, gRPC ...", flush=True)
                grpc_rows = through_grpc(
                    servers[0], index_type, data, queries, truth, args.concurrency, milvus, servers[1]
                )
                rows.update({(index_type, "milvus", k): v for k, v in grpc_rows.items()})
                if index_type == "ivfpq":
                    print("ivfpq, refine_factor=1: milvus, gRPC ...", flush=True)
                    grpc_rows = through_grpc(
                        servers[0],
                        index_type,
                        data,
                        queries,
                        truth,
                        args.concurrency,
                        milvus,
                        ivfpq={"refine_factor": 1},
                        label=", refine 1",
                    )
                    rows.update({(index_type, "milvus", k): v for k, v in grpc_rows.items()})
            if args.visibility:
                from visibility import read_after_write

                print("read-after-write across replicas ...", flush=True)
                visibility_report = read_after_write(milvus.uri, args.trials)
        finally:
            for server in servers:
                server.terminate()
            milvus.stop()

    print(
        f"\n{count} vectors, {DIM}-d, inner product, {len(queries)} queries, k=10, {os.cpu_count()} CPUs, "
        f"faiss {faiss.__version__}; add = vectors/s of inserting everything (embedded ivfpq: training "
        "included); index s = Milvus: flush, then wait until every row is indexed and loaded; memory = RSS growth "
        "(Milvus: offshelf server + Milvus processes)\n"
    )
    print(
        "| index | backend   | path                                           | add vec/s | index s | search QPS "
        "| p50 ms | p99 ms | recall@10 | memory MB |"
    )
    print(
        "|-------|-----------|------------------------------------------------|-----------|---------|------------|--------"
        "|--------|-----------|-----------|"
    )
    for (index_type, backend, path), r in rows.items():
        if r.get("error"):
            r = {**r, "qps": float("nan"), "lat": (float("nan"),) * 2, "recall": float("nan")}
        index_s = f"{r['index']:7.1f}" if r.get("index") is not None else f"{'-':>7}"
        print(
            f"| {index_type:<5} | {backend:<9} | {path:<46} | {r['add']:9.0f} | {index_s} | {r['qps']:10.0f} | "
            f"{r['lat'][0]:6.2f} | {r['lat'][1]:6.2f} | {r['recall']:9.3f} | {r['memory']:9.0f} |"
        )
    if "hnsw" in types:
        for backend in backends:
            bounded = ", Bounded" if backend == "milvus" else ""
            for per_call in (1, QUERY_BATCH):
                raw = rows[("hnsw", "raw faiss", f"raw faiss, {per_call}/call")]
                served = rows[("hnsw", backend, f"gRPC, {per_call}/call, {args.concurrency} clients{bounded}")]
                if served.get("error"):
                    continue
                print(
                    f"hnsw, {backend}, {per_call} queries per call: gRPC QPS = {served['qps'] / raw['qps']:.0%} of "
                    f"raw faiss at recall@10 {served['recall']:.3f} (target >= 70% at recall >= 0.95)"
                )
    if visibility_report:
        print()
        print(visibility_report)


if __name__ == "__main__":
    main()
