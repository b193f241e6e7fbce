"""Python gRPC's cost per call: the thread-pool server (what offshelf runs) against the asyncio server (grpc.aio).

Both serve the same Search handler: parse the query vector, search a FAISS HNSW index (the service's parameters),
build ten hits. An 'empty' handler answers without searching, so its row is gRPC and protobuf alone. The server
runs in a child process; N client threads here make one-query calls for --seconds. Prints queries/s, p50/p99 and
the server's CPU milliseconds per call (from /proc), and raw FAISS one query at a time in this process.
Usage: python bench/grpc_servers.py [--vectors 100000] [--seconds 10] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pathlib
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import grpc
import numpy as np

from offshelf.protos.v1 import embedding_pb2
from offshelf.protos.v1 import index_pb2 as pb2
from offshelf.protos.v1 import index_pb2_grpc as pb2_grpc
from offshelf.service.index.config import CollectionConfig
from offshelf.service.index.embedded.faiss_index import new_index, search_params
from offshelf.service.index.parameters import with_defaults
from offshelf.service.models.binding import Binding

from common import clustered_vectors
from embed import percentile, process_cpu_seconds

ROOT = pathlib.Path(__file__).resolve().parent.parent

DIM = 512


def build_index(count: int) -> tuple[faiss.Index, object, np.ndarray]:
    config = CollectionConfig("bench", Binding(dim=DIM), index_type="hnsw")
    with_defaults(config)
    data = clustered_vectors(count, DIM, seed=0)
    faiss.normalize_L2(data)
    index = new_index(config, DIM, None)
    index.add_with_ids(data, np.arange(count))
    return index, search_params(config, False, 0, 0, None), data


def answer(index: faiss.Index | None, params: object, request: pb2.SearchRequest) -> pb2.SearchResponse:
    if index is None:
        return pb2.SearchResponse()
    query = np.asarray(request.vector.values, np.float32).reshape(1, DIM)
    scores, ids = index.search(query, request.k, params=params)
    return pb2.SearchResponse(
        hits=[pb2.Hit(id=str(i), score=float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
    )


def serve(kind: str, count: int, port: multiprocessing.Value, ready: multiprocessing.Event) -> None:
    """The child process: one server of `kind` ('thread pool' or 'asyncio', with '+ empty' for no search)."""
    index, params, _ = build_index(count) if "empty" not in kind else (None, None, None)

    class Servicer(pb2_grpc.IndexServicer):
        def Search(self, request, context):  # noqa: N802 - the RPC's name
            return answer(index, params, request)

    class AsyncServicer(pb2_grpc.IndexServicer):
        async def Search(self, request, context):  # noqa: N802 - the RPC's name
            return answer(index, params, request)

    if kind.startswith("thread pool"):
        server = grpc.server(ThreadPoolExecutor(64))
        pb2_grpc.add_IndexServicer_to_server(Servicer(), server)
        port.value = server.add_insecure_port("127.0.0.1:0")
        server.start()
        ready.set()
        server.wait_for_termination()
    else:

        async def main() -> None:
            server = grpc.aio.server()
            pb2_grpc.add_IndexServicer_to_server(AsyncServicer(), server)
            port.value = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            ready.set()
            await server.wait_for_termination()

        asyncio.run(main())


def measure(kind: str, count: int, queries: np.ndarray, clients: int, seconds: float) -> dict:
    spawn = multiprocessing.get_context("spawn")  # forking after grpc and faiss have started threads is unsafe
    port, ready = spawn.Value("i", 0), spawn.Event()
    process = spawn.Process(target=serve, args=(kind, count, port, ready), daemon=True)
    process.start()
    try:
        if not ready.wait(600):
            raise RuntimeError(f"{kind} server did not start")
        channel = grpc.insecure_channel(f"127.0.0.1:{port.value}")
        stub = pb2_grpc.IndexStub(channel)
        requests = [pb2.SearchRequest(collection="c", k=10, vector=embedding_pb2.Vector(values=q)) for q in queries]
        for request in requests[:50]:
            stub.Search(request)
        deadline = time.perf_counter() + seconds

        def worker(w: int) -> list[float]:
            durations, i = [], w
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                stub.Search(requests[i % len(requests)])
                durations.append(time.perf_counter() - t)
                i += clients
            return durations

        cpu, started = process_cpu_seconds(process.pid), time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            durations = [d for part in pool.map(worker, range(clients)) for d in part]
        wall, cpu = time.perf_counter() - started, process_cpu_seconds(process.pid) - cpu
        channel.close()
    finally:
        process.kill()
        process.join()
    return {
        "name": kind,
        "qps": len(durations) / wall,
        "p50": percentile(durations, 50),
        "p99": percentile(durations, 99),
        "cpu": cpu / len(durations) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(f"building HNSW over {args.vectors} vectors ...", flush=True)
    index, params, data = build_index(args.vectors)
    queries = data[::97][:2000] + 0.05 * clustered_vectors(min(2000, len(data[::97])), DIM, 1)
    faiss.normalize_L2(queries)
    durations = []
    for query in queries:
        t = time.perf_counter()
        index.search(query.reshape(1, DIM), 10, params=params)
        durations.append(time.perf_counter() - t)
    rows = [
        {
            "name": "raw faiss, one query at a time",
            "qps": len(durations) / sum(durations),
            "p50": percentile(durations, 50),
            "p99": percentile(durations, 99),
            "cpu": float("nan"),
        }
    ]
    del index
    for kind in ("thread pool + empty", "asyncio + empty", "thread pool", "asyncio"):
        print(f"{kind} ...", flush=True)
        rows.append(measure(kind, args.vectors, queries, args.clients, args.seconds))
    print(
        f"\nSearch, one query a call, {args.clients} client threads, HNSW {args.vectors}x{DIM}, k=10, "
        f"{os.cpu_count()} CPUs, grpcio {grpc.__version__}; server CPU ms per call from /proc\n"
    )
    print("| server | queries/s | % of raw faiss | p50 ms | p99 ms | server CPU ms/call |")
    print("|---|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['qps']:.0f} | {r['qps'] / rows[0]['qps']:.0%} | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{r['cpu']:.2f} |"
        )


if __name__ == "__main__":
    main()
