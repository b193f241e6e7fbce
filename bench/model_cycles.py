"""Resident memory across model unload/load cycles under traffic (issue 23 item 7).

Starts a server on the real EfficientNet-Lite0, keeps --clients threads sending one-image Embed calls, and runs
--cycles RepositoryModelUnload + RepositoryModelLoad cycles, each unload waited for until the old version is
retired (its sessions closed), each load until the clients have had as many calls answered. Prints the server's
RSS once warm, after the first --warmup cycles, at a few points after, and --settle seconds after the last cycle
(traffic stopped), with the growth after the warm-up cycles: with the model unloaded (measured as each old version
has been retired: what the process keeps between models) and serving (just after the load: noisier, it holds
whatever the new sessions and the calls in flight have allocated so far).

Usage: python bench/model_cycles.py [--repo DIR] [--cycles N] [--clients N] [--env NAME=VALUE ...]
--env sets a variable of the server's environment (MALLOC_ARENA_MAX=2, say), to compare allocators' settings.
The model repository defaults to build/repo (the default export of efficientnet-lite0), exported if missing.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import tempfile
import threading
import time

import grpc

from offshelf.protos.inference import grpc_predict_v2_pb2 as oip
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

from common import ServerProcess, skimage_photo
from embed import ensure_repo
from search import rss_mb

ROOT = pathlib.Path(__file__).resolve().parent.parent

MODEL = "efficientnet-lite0"


def retired(stub: oip_grpc.GRPCInferenceServiceStub) -> bool:
    """Every version of the model unloaded and closed (none LOADING, UNLOADING or READY)."""
    index = stub.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=30)
    return all(m.state == "UNAVAILABLE" for m in index.models if m.name == MODEL)


def traffic(address: str, photo: bytes, stop: threading.Event, codes: collections.Counter[str]) -> None:
    with grpc.insecure_channel(address) as channel:
        embed = embedding_pb2_grpc.EmbeddingStub(channel).Embed
        request = embedding_pb2.EmbedRequest(model=MODEL, images=[photo], outputs=["embedding"])
        while not stop.is_set():
            try:
                embed(request, timeout=60)
                codes["OK"] += 1
            except grpc.RpcError as err:
                codes[err.code().name] += 1  # UNAVAILABLE while the model is unloaded
                stop.wait(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10, help="cycles before growth is measured")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--settle", type=float, default=12, help="seconds after the last cycle")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server's environment")
    args = parser.parse_args()
    ensure_repo(args.repo)
    environment = dict(item.split("=", 1) for item in args.env)
    photo = skimage_photo("chelsea.png").read_bytes()
    server = ServerProcess(args.repo, pathlib.Path(tempfile.mkdtemp()), environment=environment, drain_seconds=0)
    stop = threading.Event()
    codes: collections.Counter[str] = collections.Counter()
    rows: list[tuple[str, float, float]] = []  # (point, RSS with the model unloaded, RSS serving)
    unloaded: list[float] = []
    try:
        server.wait_serving()
        pid = server.process.pid
        clients = [
            threading.Thread(target=traffic, args=(server.address, photo, stop, codes)) for _ in range(args.clients)
        ]
        for client in clients:
            client.start()
        time.sleep(2)  # a warm server: the sessions' arenas and the RPC threads allocated
        rows.append(("serving, under traffic", float("nan"), rss_mb(pid)))
        marks = {args.warmup, args.cycles // 4, args.cycles // 2, args.cycles}
        started = time.perf_counter()
        with grpc.insecure_channel(server.address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            for cycle in range(1, args.cycles + 1):
                stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name=MODEL), timeout=60)
                deadline = time.monotonic() + 120
                while not retired(stub):
                    if time.monotonic() > deadline:
                        sys.exit(f"cycle {cycle}: the unloaded model was not retired within 120 s")
                    time.sleep(0.05)
                unloaded.append(rss_mb(pid))  # no model loaded: what the process keeps between cycles
                stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=MODEL), timeout=120)
                served = codes["OK"] + args.clients
                while codes["OK"] < served:  # each client's calls reach the new sessions before the next unload
                    time.sleep(0.01)
                if cycle in marks:
                    rows.append((f"after {cycle} cycles", unloaded[-1], rss_mb(pid)))
                if cycle % 10 == 0:
                    print(f"cycle {cycle}: {unloaded[-1]:,.0f} / {rss_mb(pid):,.0f} MB", file=sys.stderr, flush=True)
        seconds = time.perf_counter() - started
        stop.set()
        for client in clients:
            client.join()
        time.sleep(args.settle)
        rows.append((f"{args.settle:g} s after the last cycle, no traffic", float("nan"), rss_mb(pid)))
    finally:
        stop.set()
        server.kill()
    warm = next(row for row in rows if row[0] == f"after {args.warmup} cycles")
    settings = " ".join(args.env) or "default allocator settings"
    print(f"{args.cycles} cycles in {seconds:.0f} s with {args.clients} clients ({settings}); calls: {dict(codes)}")
    print(
        f"| point | RSS unloaded MB | growth since cycle {args.warmup} | RSS serving MB "
        f"| growth since cycle {args.warmup} |"
    )
    print("|---|--:|--:|--:|--:|")
    for name, idle, serving in rows:
        idle_cells = "- | -" if idle != idle else f"{idle:,.0f} | {idle - warm[1]:+,.0f}"  # nan: not measured
        print(f"| {name} | {idle_cells} | {serving:,.0f} | {serving - warm[2]:+,.0f} |")


if __name__ == "__main__":
    main()
