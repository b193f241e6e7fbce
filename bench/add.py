"""`offshelf add` against the server's own Embed throughput, and the client's memory.

Prints one table: the server's Embed throughput at concurrency 16 (one-image calls) on the real
EfficientNet-Lite0, then `offshelf add` of the UKBench photos into a collection (the CLI's default
batches and concurrency) in the same run, and the CLI's peak resident memory while adding four
copies of them (2,000 photos for the shared 500).

Usage: python bench/add.py [--repo DIR] [--images DIR] [--seconds S]
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from offshelf.clients import Client

from common import ServerProcess
from embed import ensure_repo

ROOT = pathlib.Path(__file__).resolve().parent.parent


def embed_throughput(address: str, photos: list[bytes], seconds: float, concurrency: int = 16) -> float:
    """Images per second of one-image Embed calls from `concurrency` threads."""

    def worker(w: int) -> int:
        done, end = 0, time.perf_counter() + seconds
        with Client(address) as client:
            while time.perf_counter() < end:
                client.embed([photos[(w * 7919 + done) % len(photos)]], outputs=["embedding"])
                done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(worker, range(concurrency)))
    return done / (time.perf_counter() - started)


def offshelf_add(address: str, collection: str, folder: pathlib.Path) -> tuple[float, float]:
    """Runs `offshelf add` to its end under GNU time; returns its wall time in seconds and its peak resident
    memory in MB. (The rusage of a child forked from this large process would count this process's pages.)"""
    command = [sys.executable, "-m", "offshelf.clients.cli", "add", "--server", address, "--collection", collection]
    started = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command, str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if result.returncode:
        sys.exit(f"offshelf add failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started, int(result.stderr.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--images", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    parser.add_argument("--seconds", type=float, default=10.0, help="time of the Embed measurement")
    args = parser.parse_args()
    ensure_repo(args.repo)
    files = sorted(args.images.rglob("*.jpg"))
    if not files:
        sys.exit(f"no JPEGs under {args.images}")
    copies = pathlib.Path(tempfile.mkdtemp(prefix="offshelf-add-", dir=ROOT / "build"))
    for copy in range(4):
        (copies / f"copy{copy}").mkdir()
        for file in files:
            (copies / f"copy{copy}" / file.name).symlink_to(file.resolve())
    server = ServerProcess(args.repo, pathlib.Path(tempfile.mkdtemp(dir=ROOT / "build")), drain_seconds=0)
    try:
        server.wait_serving()
        embed_ips = embed_throughput(server.address, [f.read_bytes() for f in files[:256]], args.seconds)
        with Client(server.address) as client:
            client.create_collection("photos")
            client.create_collection("copies")
        seconds, small_mb = offshelf_add(server.address, "photos", args.images)
        copies_seconds, large_mb = offshelf_add(server.address, "copies", copies)
    finally:
        server.terminate(timeout=120)
    add_ips = len(files) / seconds
    print("| measure | value |\n|---|---|")
    print(f"| Embed at concurrency 16, one image per call | {embed_ips:.1f} img/s |")
    print(
        f"| `offshelf add` of {len(files)} photos | {add_ips:.1f} img/s ({100 * add_ips / embed_ips:.0f} % of Embed) |"
    )
    print(f"| `offshelf add` of {4 * len(files)} photos | {4 * len(files) / copies_seconds:.1f} img/s |")
    print(
        f"| CLI peak resident memory | {small_mb:.0f} MB ({len(files)} photos), {large_mb:.0f} MB ({4 * len(files)}) |"
    )


if __name__ == "__main__":
    main()
