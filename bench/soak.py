"""Soak: Embed, Search and Add against one server for a long time, and the slope of its resident memory (issue 23
item 22).

Starts a server on the real EfficientNet-Lite0 with an embedded collection bound to it, then runs closed-loop
clients until --minutes have passed: Embed of 1-4 photos, Search by photo and by vector, and Add of 8 photos whose
items are removed again once --window newer ones are in (so the collection's size, and the memory its vectors
take, stops growing after the first minutes: what grows after that is a leak). Samples the server's RSS every
--every seconds and prints the calls made, RSS at the start, at the end of the warm-up and at the end, and the
least-squares slope of RSS after the warm-up in MB/h (target: at most 50).

Usage: python bench/soak.py [--minutes 30] [--warmup-minutes 5] [--repo DIR] [--images DIR] [--env NAME=VALUE ...]
The model repository defaults to build/repo (the default export of efficientnet-lite0), exported if missing.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import random
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

from offshelf.clients import Client

from common import ServerProcess
from embed import ensure_repo
from search import rss_mb

ROOT = pathlib.Path(__file__).resolve().parent.parent

MODEL = "efficientnet-lite0"
COLLECTION = "soak"


class Soak:
    def __init__(self, address: str, photos: list[bytes], window: int, stop: threading.Event):
        self.address = address
        self.photos = photos
        self.window = window
        self.stop = stop
        self.calls: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def count(self, name: str) -> None:
        with self.lock:
            self.calls[name] += 1

    def loop(self, name: str, call) -> None:
        """Calls `call(client, rng)` until stopped, counting each call by name and status."""
        rng = random.Random(name)
        with Client(self.address, timeout=60, retries=0) as client:
            while not self.stop.is_set():
                try:
                    call(client, rng)
                    self.count(f"{name} OK")
                except grpc.RpcError as err:
                    self.count(f"{name} {err.code().name}")

    def embed(self, client: Client, rng: random.Random) -> None:
        client.embed(rng.sample(self.photos, rng.randint(1, 4)), model=MODEL)

    def search_image(self, client: Client, rng: random.Random) -> None:
        client.search(COLLECTION, image=rng.choice(self.photos), k=10)

    def search_vector(self, client: Client, rng: random.Random) -> None:
        vector = np.asarray([rng.gauss(0, 1) for _ in range(1280)], np.float32)
        client.search(COLLECTION, vector=vector / np.linalg.norm(vector), k=10)

    def add(self, client: Client, rng: random.Random) -> None:
        """8 photos in, and the batch added `window` items ago out."""
        with self.lock:
            first = self.calls["add OK"] * 8
        client.add(COLLECTION, images=rng.sample(self.photos, 8), ids=[f"soak-{first + i}" for i in range(8)])
        if first >= self.window:
            client.remove(COLLECTION, ids=[f"soak-{first - self.window + i}" for i in range(8)])


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float:
    seconds, rss = np.asarray(samples).T
    return float(np.polyfit(seconds / 3600, rss, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup-minutes", type=float, default=5)
    parser.add_argument("--every", type=float, default=10, help="seconds between RSS samples")
    parser.add_argument("--window", type=int, default=1000, help="items kept in the collection")
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--images", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server's environment")
    args = parser.parse_args()
    ensure_repo(args.repo)
    photos = [p.read_bytes() for p in sorted(args.images.rglob("*.jpg"))[:200]]
    if not photos:
        sys.exit(f"no JPEGs under {args.images}")
    environment = dict(item.split("=", 1) for item in args.env)
    server = ServerProcess(args.repo, pathlib.Path(tempfile.mkdtemp()), environment=environment, drain_seconds=0)
    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    try:
        server.wait_serving()
        with Client(server.address) as client:
            client.create_collection(COLLECTION, model=MODEL)
        soak = Soak(server.address, photos, args.window, stop)
        loops = [("embed", soak.embed), ("search by image", soak.search_image)]
        loops += [("search by vector", soak.search_vector), ("add", soak.add)]
        threads = [threading.Thread(target=soak.loop, args=loop) for loop in loops]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        while (now := time.monotonic()) < end:
            samples.append((now - started, rss_mb(server.process.pid)))
            print(f"{(now - started) / 60:5.1f} min: {samples[-1][1]:,.0f} MB", file=sys.stderr, flush=True)
            stop.wait(min(args.every, max(0.0, end - now)))
        samples.append((time.monotonic() - started, rss_mb(server.process.pid)))
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        server.kill()
    warm = [(t, rss) for t, rss in samples if t >= args.warmup_minutes * 60]
    settings = " ".join(args.env) or "default allocator settings"
    print(
        f"{args.minutes:g} min soak ({settings}); calls: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(soak.calls.items()))
    )
    print("| run | RSS at start MB | after warm-up MB | at end MB | slope after warm-up MB/h |")
    print("|---|--:|--:|--:|--:|")
    print(
        f"| {args.minutes:g} min, warm-up {args.warmup_minutes:g} min | {samples[0][1]:,.0f} | {warm[0][1]:,.0f} "
        f"| {samples[-1][1]:,.0f} | {slope_mb_per_hour(warm):+,.1f} |"
    )


if __name__ == "__main__":
    main()
