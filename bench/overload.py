"""Overload: the server refuses what it cannot serve at once, keeps answering health, and bounds the latency of
what it accepts.

First measures the capacity (images/s) of the real EfficientNet-Lite0 with 16 closed-loop clients, then offers
--overload times that many images per second, open loop (calls are sent on schedule whatever the answers), for
--seconds: once as one-image Embed calls, once as 64-image calls. A health check every 100 ms runs beside them.
Prints a table: per scenario the offered and served images/s, the accepted calls' p50/p99 latency, the refused
calls (UNAVAILABLE) and their p50/p99 latency, any other status, and the health checks' p99 and failures.

Usage: python bench/overload.py [--repo DIR] [--images DIR] [--seconds S] [--overload X]
The model repository defaults to build/repo (the default export of efficientnet-lite0), exported if missing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import pathlib
import sys
import tempfile
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

from common import ServerProcess
from embed import ensure_repo, process_cpu_seconds

ROOT = pathlib.Path(__file__).resolve().parent.parent

MODEL = "efficientnet-lite0"


def ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:,.0f}" if values else "-"


async def capacity(stub, photos: list[bytes], seconds: float, clients: int = 16) -> float:
    """Images/s served to `clients` closed-loop one-image callers."""
    served = 0
    end = time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal served
        i = c
        while time.perf_counter() < end:
            request = embedding_pb2.EmbedRequest(model=MODEL, images=[photos[i % len(photos)]], outputs=["embedding"])
            await stub.Embed(request, timeout=60)
            served += 1
            i += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return served / (time.perf_counter() - started)


async def open_loop(
    stub, health, server_pid: int, photos: list[bytes], images_per_second: float, per_call: int, seconds: float
) -> dict:
    """Sends calls of `per_call` images on schedule for `seconds`; health checked every 100 ms meanwhile."""
    outcomes: list[tuple[grpc.StatusCode, float]] = []
    health_times: list[float] = []
    health_failures = collections.Counter()
    interval = per_call / images_per_second
    stop = time.perf_counter() + seconds

    async def call(i: int) -> None:
        images = [photos[(i * per_call + j) % len(photos)] for j in range(per_call)]
        request = embedding_pb2.EmbedRequest(model=MODEL, images=images, outputs=["embedding"])
        started = time.perf_counter()
        try:
            await stub.Embed(request, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
        outcomes.append((code, time.perf_counter() - started))

    async def check_health() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                health_times.append(time.perf_counter() - started)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    health_failures["NOT_SERVING"] += 1
            except grpc.aio.AioRpcError as err:
                health_failures[err.code().name] += 1
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(check_health())]
    server_cpu, own_cpu = process_cpu_seconds(server_pid), time.process_time()
    started = time.perf_counter()
    i = 0
    while (now := time.perf_counter()) < stop:
        due = started + i * interval
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(call(i)))
        i += 1
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    server_cpu, own_cpu = process_cpu_seconds(server_pid) - server_cpu, time.process_time() - own_cpu
    accepted = [t for code, t in outcomes if code == grpc.StatusCode.OK]
    refused = [t for code, t in outcomes if code == grpc.StatusCode.UNAVAILABLE]
    others = collections.Counter(
        code.name for code, _ in outcomes if code not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    )
    return {
        "offered": images_per_second,
        "served": len(accepted) * per_call / wall,
        "calls": len(outcomes),
        "accepted": len(accepted),
        "accepted_p50": ms(accepted, 50),
        "accepted_p99": ms(accepted, 99),
        "refused": len(refused),
        "refused_p50": ms(refused, 50),
        "refused_p99": ms(refused, 99),
        "others": ", ".join(f"{n} {c}" for n, c in others.items()) or "0",
        "health_p99": ms(health_times, 99),
        "health_failures": ", ".join(f"{n} {c}" for n, c in health_failures.items()) or "0",
        "server_cpu": server_cpu / wall,
        "client_cpu": own_cpu / wall,
    }


async def run(address: str, server_pid: int, photos: list[bytes], args: argparse.Namespace) -> list[tuple[str, dict]]:
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with (
        grpc.aio.insecure_channel(address, options=options) as channel,
        grpc.aio.insecure_channel(address) as health_channel,
    ):
        stub = embedding_pb2_grpc.EmbeddingStub(channel)
        health = health_pb2_grpc.HealthStub(health_channel)
        await capacity(stub, photos, 2)  # warm-up
        served = await capacity(stub, photos, args.seconds)
        rows = []
        for per_call in (1, 64):
            offered = served * args.overload
            rows.append(
                (
                    f"{per_call} image{'s' if per_call > 1 else ''} per call",
                    await open_loop(stub, health, server_pid, photos, offered, per_call, args.seconds),
                )
            )
            await asyncio.sleep(3)  # let the queue empty between scenarios
        return [("capacity (16 closed-loop clients)", {"offered": served, "served": served})] + rows


def table(rows: list[tuple[str, dict]], overload: float) -> str:
    lines = [
        f"| offered load ({overload:g}x capacity) | offered img/s | served img/s | calls | accepted "
        "| accepted p50 / p99 ms "
        "| refused | refused p50 / p99 ms | other statuses | health p99 ms | health failures "
        "| server / load generator CPU (cores) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in rows:
        if "calls" not in r:
            lines.append(f"| {name} | - | {r['served']:.0f} | | | | | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['offered']:.0f} | {r['served']:.0f} | {r['calls']:,} | {r['accepted']:,} "
            f"| {r['accepted_p50']} / {r['accepted_p99']} | {r['refused']:,} | {r['refused_p50']} / {r['refused_p99']} "
            f"| {r['others']} | {r['health_p99']} | {r['health_failures']} "
            f"| {r['server_cpu']:.2f} / {r['client_cpu']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--images", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per scenario")
    parser.add_argument("--overload", type=float, default=4.0, help="offered load, as a multiple of capacity")
    args = parser.parse_args()
    ensure_repo(args.repo)
    photos = [p.read_bytes() for p in sorted(args.images.rglob("*.jpg"))[:256]]
    if not photos:
        sys.exit(f"no JPEGs under {args.images}")
    server = ServerProcess(args.repo, pathlib.Path(tempfile.mkdtemp()), drain_seconds=0)
    try:
        server.wait_serving()
        rows = asyncio.run(run(server.address, server.process.pid, photos, args))
    finally:
        server.kill()
    print(table(rows, args.overload))


if __name__ == "__main__":
    main()
