"""Which ASGI server the HTTP door runs on: uvicorn (h11, its pure-Python parser, as offshelf uses it), uvicorn with
httptools, and granian (Rust), each serving the same Starlette app in a process of its own: one route that takes
an upload of a UKBench JPEG's size as multipart (parsed as the door does) and answers a 1280-d vector as JSON, so
that only the server and the framework differ. One-request-at-a-time clients from N threads, one connection each.
Prints requests/s, p50 and the server's CPU per request (from /proc).
Usage: python bench/asgi_servers.py [--seconds S] [--threads N]   (granian and httptools: pip install them first)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from common import free_port, until
from embed import percentile, process_cpu_seconds

APP = """
import numpy as np
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

VECTOR = np.random.default_rng(0).random(1280, dtype=np.float32).tolist()


async def embed(request):
    form = await request.form()
    size = len(await form["image"].read())
    return JSONResponse({"bytes": size, "embedding": VECTOR})


async def live(request):
    return JSONResponse({"live": True})


app = Starlette(routes=[Route("/embed", embed, methods=["POST"]), Route("/live", live)])
"""
SERVERS = {
    "uvicorn (h11)": ["-m", "uvicorn", "--http", "h11", "--loop", "asyncio", "--log-level", "warning"],
    "uvicorn (httptools)": ["-m", "uvicorn", "--http", "httptools", "--loop", "asyncio", "--log-level", "warning"],
    "granian (1 worker)": ["-m", "granian", "--interface", "asgi", "--workers", "1", "--log-level", "warning"],
}


def command(name: str, port: int) -> list[str]:
    return [sys.executable, *SERVERS[name], "--port", str(port), "asgi_app:app"]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (granian serves from a worker process of its own)."""
    children = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return process_cpu_seconds(pid) + sum(tree_cpu_seconds(child) for child in children)


def measure(name: str, folder: pathlib.Path, photo: bytes, seconds: float, threads: int) -> dict:
    port = free_port()
    process = subprocess.Popen(command(name, port), cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: requests.get(f"{url}/live", timeout=1).ok, timeout=30, tolerate=(requests.ConnectionError,))

        def worker(_: int) -> list[float]:
            session, durations = requests.Session(), []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                begun = time.perf_counter()
                session.post(f"{url}/embed", files={"image": ("photo.jpg", photo)}, timeout=30).raise_for_status()
                durations.append(time.perf_counter() - begun)
            return durations

        cpu, started = tree_cpu_seconds(process.pid), time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            durations = [d for ds in pool.map(worker, range(threads)) for d in ds]
        wall, cpu = time.perf_counter() - started, tree_cpu_seconds(process.pid) - cpu
    finally:
        process.terminate()
        process.wait(10)
    return {"name": name, "rps": len(durations) / wall, "p50": percentile(durations, 50), "cpu": cpu / len(durations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    folder = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "offshelf-asgi-bench"
    folder.mkdir(exist_ok=True)
    (folder / "asgi_app.py").write_text(APP)
    photo = np.random.default_rng(1).bytes(40_000)  # a UKBench JPEG's size
    rows = [measure(name, folder, photo, args.seconds, args.threads) for name in SERVERS]
    print(f"\n{args.threads} client threads, {args.seconds:.0f} s per row, {os.cpu_count()} cores\n")
    print(f"| {'server':<22} | {'requests/s':>10} | {'p50 ms':>7} | {'server CPU ms/request':>21} |")
    print(f"|{'-' * 24}|{'-' * 11}:|{'-' * 8}:|{'-' * 22}:|")
    for r in rows:
        print(f"| {r['name']:<22} | {r['rps']:10.0f} | {r['p50']:7.2f} | {r['cpu'] * 1000:21.3f} |")


if __name__ == "__main__":
    main()
