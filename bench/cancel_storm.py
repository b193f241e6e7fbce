"""A storm of calls whose callers go: how many images are inferred that nobody receives (issue 23 item 8).

Sends --calls Embed calls of --images photos each to a server of the real EfficientNet-Lite0, open loop at --rate
calls/s (faster than it serves, so that queues form): half are cancelled by the client after a random 0-300 ms,
half carry a random deadline of 20-300 ms. Prints, from the server's metrics: the images inferred, those received
(the calls answered OK), those inferred for nobody split by when their caller went (before the batch started:
target 0, such images are dropped; while it ran: unavoidable; never told to the call's handler: the call had ended
before the handler started, target 0), and those dropped before inference.

Usage: python bench/cancel_storm.py [--repo DIR] [--images-dir DIR] [--calls N] [--images N] [--rate R]
The model repository defaults to build/repo (the default export of efficientnet-lite0), exported if missing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import pathlib
import random
import sys
import tempfile
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

from common import ServerProcess
from embed import ensure_repo

ROOT = pathlib.Path(__file__).resolve().parent.parent

MODEL = "efficientnet-lite0"


def samples(server: ServerProcess) -> collections.Counter[tuple]:
    """Every sample of the server's metrics, by (name, sorted labels)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=30).read().decode()
    families = text_string_to_metric_families(text)
    return collections.Counter(
        {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    )


def total(counts: collections.Counter[tuple], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in counts.items() if n == name and labels.items() <= dict(ls).items())


async def storm(address: str, photos: list[bytes], args: argparse.Namespace) -> collections.Counter[str]:
    """The status of each call, as its client saw it."""
    rng = random.Random(0)
    codes: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = embedding_pb2_grpc.EmbeddingStub(channel)

        async def one(i: int) -> None:
            images = [photos[(i * args.images + j) % len(photos)] for j in range(args.images)]
            request = embedding_pb2.EmbedRequest(model=MODEL, images=images, outputs=["embedding"])
            cancel_after = rng.uniform(0, 0.3) if i % 2 == 0 else None
            call = stub.Embed(request, timeout=60 if cancel_after is not None else rng.uniform(0.02, 0.3))
            if cancel_after is not None:
                asyncio.get_running_loop().call_later(cancel_after, call.cancel)
            try:
                await call
                codes["OK"] += 1
            except asyncio.CancelledError:
                codes["CANCELLED"] += 1
            except grpc.aio.AioRpcError as err:
                codes[err.code().name] += 1

        tasks = []
        for i in range(args.calls):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(1 / args.rate)
        await asyncio.gather(*tasks)
    return codes


async def settled(server: ServerProcess) -> None:
    """Until the server has no call in flight and no image queued."""
    while True:
        counts = samples(server)
        if total(counts, "offshelf_in_flight_requests") == 0 and total(counts, "offshelf_queue_depth_images") == 0:
            return
        await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--images-dir", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--images", type=int, default=4, help="photos per call")
    parser.add_argument("--rate", type=float, default=200, help="calls sent per second")
    args = parser.parse_args()
    ensure_repo(args.repo)
    photos = [p.read_bytes() for p in sorted(args.images_dir.rglob("*.jpg"))[:64]]
    if not photos:
        sys.exit(f"no JPEGs under {args.images_dir}")
    server = ServerProcess(args.repo, pathlib.Path(tempfile.mkdtemp()), drain_seconds=0)
    try:
        server.wait_serving()
        before = samples(server)
        codes = asyncio.run(storm(server.address, photos, args))
        asyncio.run(settled(server))
        after = samples(server)
    finally:
        server.kill()
    delta = after - before

    def images(name: str, **labels: str) -> int:
        return int(total(delta, name, **labels))

    inferred = images("offshelf_batch_size_images_sum")
    received = codes["OK"] * args.images
    queued = images("offshelf_unclaimed_images_total", when="queued")
    running = images("offshelf_unclaimed_images_total", when="running")
    statuses = ", ".join(f"{code} {n:,}" for code, n in codes.items())
    print(f"{args.calls:,} calls of {args.images} images at {args.rate:g}/s: {statuses}")
    print(
        "| images inferred | received (calls OK) | inferred for nobody | caller gone before its batch started "
        "| caller gone while it ran | caller gone, not told to the handler | dropped before inference |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|")
    print(
        f"| {inferred:,} | {received:,} | {inferred - received:,} | {queued:,} | {running:,} "
        f"| {inferred - received - queued - running:,} | {images('offshelf_dropped_images_total'):,} |"
    )


if __name__ == "__main__":
    main()
