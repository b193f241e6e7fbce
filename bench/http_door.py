"""The HTTP door against the gRPC port: JPEG embedding throughput and latency, one-image calls from N threads.

Rows: gRPC Embed; HTTP /v1 embed with a multipart upload; HTTP /v2 infer (Open Inference Protocol REST) with the
image as binary data (Triton's binary-data extension) and the embedding back as binary; each at c=1, 8 and 16, one
connection per thread. CPU is the server process's (from /proc). Targets (issue 26): HTTP images/s at c=16 at least
90 % of gRPC's; p50 at c=1 within +1 ms of gRPC's.
Usage: python bench/http_door.py [--repo DIR] [--images DIR] [--seconds S]
(Not bench/http.py: bench/ is on the import path of tests and benches, where it would shadow the standard library's
http package.)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import threading

import onnxruntime as ort
import requests

from offshelf.clients import Client

from common import ServerProcess
from embed import MODEL, ROOT, ensure_repo, service_row

CONCURRENCY = (1, 8, 16)
OUTPUTS = json.dumps({"outputs": ["embedding"]})  # as the gRPC row asks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--images", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    args = parser.parse_args()
    ensure_repo(args.repo)
    jpegs = [p.read_bytes() for p in sorted(args.images.rglob("*.jpg"))[:256]]
    if not jpegs:
        sys.exit(f"no JPEGs under {args.images}")
    server = ServerProcess(args.repo, pathlib.Path(tempfile.mkdtemp()), drain_seconds=0, http_port=0)
    sessions = threading.local()  # one keep-alive connection per thread, as a gRPC channel per client

    def session() -> requests.Session:
        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
        return sessions.session

    def multipart(i: int) -> None:
        files = {"image": ("photo.jpg", jpegs[i % len(jpegs)], "image/jpeg"), "request": (None, OUTPUTS)}
        answer = session().post(f"{server.http_url}/v1/models/{MODEL}/embed", files=files, timeout=60)
        answer.raise_for_status()

    def binary_infer(i: int) -> None:
        jpeg = jpegs[i % len(jpegs)]
        raw = len(jpeg).to_bytes(4, "little") + jpeg
        header = {
            "inputs": [
                {"name": "encoded", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
        }
        text = json.dumps(header).encode()
        answer = session().post(
            f"{server.http_url}/v2/models/{MODEL}/infer",
            data=text + raw,
            headers={"Inference-Header-Content-Length": str(len(text))},
            timeout=60,
        )
        answer.raise_for_status()

    rows = []
    try:
        server.wait_serving()
        pid = server.process.pid
        with Client(server.address, timeout=60) as client:

            def embed(i: int) -> None:
                client.embed([jpegs[i % len(jpegs)]], model=MODEL, outputs=["embedding"])

            for call in (embed, multipart, binary_infer):
                call(0)  # warm
            for name, call in (
                ("gRPC Embed", embed),
                ("HTTP /v1 embed, multipart", multipart),
                ("HTTP /v2 infer, binary data", binary_infer),
            ):
                for concurrency in CONCURRENCY:
                    rows.append(service_row(f"{name}, c={concurrency}", call, concurrency, args.seconds, pid))
    finally:
        server.terminate()
    by_name = {r["name"]: r for r in rows}
    print(
        f"\nEfficientNet-Lite0, {len(jpegs)} JPEGs from {args.images}, onnxruntime {ort.__version__}, CPU provider, "
        f"{os.cpu_count()} cores, {args.seconds:.0f} s per row, one-image calls\n"
    )
    print(f"| {'measurement':<40} | {'images/s':>9} | {'p50 ms':>8} | {'p99 ms':>8} | {'server CPU ms/image':>19} |")
    print(f"|{'-' * 42}|{'-' * 10}:|{'-' * 9}:|{'-' * 9}:|{'-' * 20}:|")
    for r in rows:
        print(f"| {r['name']:<40} | {r['ips']:9.1f} | {r['p50']:8.2f} | {r['p99']:8.2f} | {r['cpu_ms']:19.2f} |")
    grpc_16, grpc_1 = by_name["gRPC Embed, c=16"], by_name["gRPC Embed, c=1"]
    print()
    for name in ("HTTP /v1 embed, multipart", "HTTP /v2 infer, binary data"):
        share = by_name[f"{name}, c=16"]["ips"] / grpc_16["ips"]
        extra = by_name[f"{name}, c=1"]["p50"] - grpc_1["p50"]
        print(
            f"{name}: {share:.0%} of gRPC's images/s at c=16 (target >= 90 %), p50 at c=1 {extra:+.2f} ms "
            "(target <= +1 ms)"
        )


if __name__ == "__main__":
    main()
