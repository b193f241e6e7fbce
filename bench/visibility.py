"""Read-after-write across offshelf replicas on one Milvus: Add through replica A, Search through replica B.

Each trial adds one new item through A, then searches its vector through B until B returns it. Reported per
consistency of B's searches (OFFSHELF_MILVUS_CONSISTENCY): the time of Add plus the searches up to the first one
that finds the item (median and max), how many searches that took, and how often the first search found it.
A's Add is acknowledged only after a Strong count read, i.e. once Milvus serves the write, so B's searches find it
at Bounded (the default, no wait) as at Strong (which also waits for Milvus's time tick).
Usage: python bench/visibility.py [--trials 20]   (starts its own Milvus standalone, time tick 200 ms)
"""

from __future__ import annotations

import argparse
import pathlib
import random
import tempfile
import time

import numpy as np

from offshelf.clients import Client

from common import MilvusProcess, ServerProcess, write_identity_model

ROOT = pathlib.Path(__file__).resolve().parent.parent

DIM = 16
NAME = "bench-visibility"


def trials(writer: Client, reader: Client, count: int, rng: np.random.Generator, timeout: float = 30) -> dict:
    pairs, searches, adds = [], [], []
    for trial in range(count):
        time.sleep(random.uniform(0, 0.3))  # do not lock onto the phase of Milvus's time tick
        vector = rng.standard_normal(DIM).astype(np.float32)
        item_id = f"t{trial}-{rng.integers(1 << 62)}"
        started = time.perf_counter()
        writer.add(NAME, vectors=vector[None], ids=[item_id])
        adds.append(time.perf_counter() - started)
        tries = 0
        while True:
            tries += 1
            if any(hit.id == item_id for hit in reader.search(NAME, vector=vector, k=10)):
                break
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"item {item_id} not visible through the other replica after {timeout} s")
        pairs.append(time.perf_counter() - started)
        searches.append(tries)
    return {
        "median": float(np.median(pairs)) * 1000,
        "max": max(pairs) * 1000,
        "add": float(np.median(adds)) * 1000,
        "first": sum(1 for s in searches if s == 1) / len(searches),
        "max_searches": max(searches),
    }


def read_after_write(milvus_uri: str, count: int = 20) -> str:
    """Starts replica A and, on the same Milvus, replica B once per consistency; returns a markdown table."""
    repo = write_identity_model(ROOT / "build" / "bench-repo", DIM)
    rng = np.random.default_rng(0)
    results = {}
    writer = ServerProcess(repo, pathlib.Path(tempfile.mkdtemp()), drain_seconds=0, milvus_uri=milvus_uri)
    try:
        writer.wait_serving()
        with Client(writer.address, timeout=60) as a:
            a.create_collection(NAME, model=f"random-projection-{DIM}", index_type="flat")
            seeds = rng.standard_normal((100, DIM)).astype(np.float32)
            a.add(NAME, vectors=seeds, ids=[f"seed{i}" for i in range(100)])
            for consistency in ("Bounded", "Strong"):
                setting = {} if consistency == "Bounded" else {"milvus_consistency": consistency}  # Bounded: default
                reader = ServerProcess(
                    repo, pathlib.Path(tempfile.mkdtemp()), drain_seconds=0, milvus_uri=milvus_uri, **setting
                )
                try:
                    reader.wait_serving()
                    with Client(reader.address, timeout=60) as b:
                        b.search(NAME, vector=rng.standard_normal(DIM).astype(np.float32), k=10)  # opens it
                        results[consistency] = trials(a, b, count, rng)
                finally:
                    reader.terminate()
            a.delete_collection(NAME)
    finally:
        writer.terminate()
    lines = [
        f"Read-after-write across two replicas, {count} trials each: Add (1 item) through A, then Search through B "
        "until B returns it",
        "",
        "| B's consistency     | Add+Search until found, median ms | max ms | Add alone, median ms "
        "| found by B's first search | most searches needed |",
        "|---------------------|-----------------------------------|--------|----------------------"
        "|---------------------------|----------------------|",
    ]
    for consistency, r in results.items():
        consistency += " (default)" if consistency == "Bounded" else ""
        lines.append(
            f"| {consistency:<19} | {r['median']:33.0f} | {r['max']:6.0f} | {r['add']:20.1f} "
            f"| {r['first']:25.0%} | {r['max_searches']:20d} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--time-tick-ms", type=int, default=200, help="Milvus proxy.timeTickInterval")
    args = parser.parse_args()
    milvus = MilvusProcess(pathlib.Path(tempfile.mkdtemp()) / "milvus", time_tick_ms=args.time_tick_ms)
    try:
        milvus.wait_ready()
        print(read_after_write(milvus.uri, args.trials))
    finally:
        milvus.stop()


if __name__ == "__main__":
    main()
