"""Embedding throughput, latency and CPU cost: onnxruntime in-process, the textbook in-process pipeline, and the
service end to end (Embed; ModelInfer of the Open Inference Protocol with encoded images or FP32 tensors).

Prints one table: images/s, p50/p99 latency per call, and CPU milliseconds per image, of this process for the
in-process rows and of the server process for the service rows (from /proc), so that a gain is a gain and not
work moved elsewhere. One-image calls from N threads for the service rows.
Usage: python bench/embed.py [--repo DIR] [--images DIR] [--seconds S] [--set KEY=VALUE ...]
The model repository defaults to build/repo (the default export of efficientnet-lite0), exported if missing; --set
passes server settings (e.g. --set max_batch_delay_ms=0).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort

from offshelf.clients import Client
from offshelf.protos.inference import grpc_predict_v2_pb2 as oip_pb2
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from offshelf.service.api.oip import serialize_bytes
from offshelf.service.models.loaded_model import read_card
from offshelf.service.models.preprocess import Preprocessor

from common import ServerProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent

MODEL = "efficientnet-lite0"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (from /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def row(name: str, images: int, durations: list[float], wall: float, cpu: float) -> dict:
    return {
        "name": name,
        "ips": images / wall,
        "p50": percentile(durations, 50),
        "p99": percentile(durations, 99),
        "cpu_ms": cpu / images * 1000,
    }


def in_process_row(name: str, images_per_call: int, call: Callable[[], object], seconds: float) -> dict:
    """Calls repeatedly for about `seconds` in this thread."""
    durations: list[float] = []
    cpu, started = own_cpu_seconds(), time.perf_counter()
    while time.perf_counter() < started + seconds or len(durations) < 3:
        begun = time.perf_counter()
        call()
        durations.append(time.perf_counter() - begun)
    wall = time.perf_counter() - started
    return row(name, images_per_call * len(durations), durations, wall, own_cpu_seconds() - cpu)


def service_row(name: str, call: Callable[[int], object], concurrency: int, seconds: float, pid: int) -> dict:
    """`concurrency` threads each send one-image calls for `seconds`; CPU is the server process's."""

    def worker(w: int) -> list[float]:
        end, durations = time.perf_counter() + seconds, []
        while time.perf_counter() < end:
            begun = time.perf_counter()
            call(w * 100_003 + len(durations))
            durations.append(time.perf_counter() - begun)
        return durations

    cpu, started = process_cpu_seconds(pid), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        durations = [d for ds in pool.map(worker, range(concurrency)) for d in ds]
    wall = time.perf_counter() - started
    return row(name, len(durations), durations, wall, process_cpu_seconds(pid) - cpu)


def ensure_repo(repo: pathlib.Path) -> pathlib.Path:
    if not (repo / MODEL / "1" / "model.onnx").exists():
        from offshelf.export.repository import ExportRequest, export_model
        from offshelf.export.zoo import build_network

        export_model(ExportRequest(build_network(MODEL), repo, MODEL))
    return repo / MODEL / "1"


def in_process_rows(version_dir: pathlib.Path, jpegs: list[bytes], seconds: float) -> list[dict]:
    card = read_card(version_dir)
    pre = Preprocessor(card.preprocessing, 10**8)
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = []
    for batch in (1, 8, 16, 32):
        tensors = {"image": np.stack([pre(jpegs[i % len(jpegs)]) for i in range(batch)])}
        session.run(None, tensors)
        run = lambda t=tensors: session.run(None, t)  # noqa: E731
        rows.append(in_process_row(f"(a) onnxruntime in-process FP32, batch {batch}", batch, run, seconds))
    counter = iter(range(10**9))
    decode = lambda: pre(jpegs[next(counter) % len(jpegs)])  # noqa: E731
    rows.append(in_process_row("(b) decode + preprocess, 1 image", 1, decode, seconds))

    def decode_and_infer(batch: int = 16) -> None:
        start = next(counter)
        session.run(None, {"image": np.stack([pre(jpegs[(start + i) % len(jpegs)]) for i in range(batch)])})

    rows.append(in_process_row("(b+a) textbook in-process: decode + FP32, batch 16", 16, decode_and_infer, seconds))
    return rows


def service_rows(args: argparse.Namespace, version_dir: pathlib.Path, jpegs: list[bytes]) -> list[dict]:
    pre = Preprocessor(read_card(version_dir).preprocessing, 10**8)
    tensors = [pre(jpeg).astype("<f4").tobytes() for jpeg in jpegs[:64]]
    crops = [pre.views(pre.decode(jpeg), 0)[0].tobytes() for jpeg in jpegs[:64]]
    settings = dict(setting.split("=", 1) for setting in args.set)
    server = ServerProcess(args.repo, pathlib.Path(tempfile.mkdtemp()), drain_seconds=0, **settings)
    rows = []
    try:
        server.wait_serving()
        pid = server.process.pid
        with Client(server.address, timeout=60) as client, grpc.insecure_channel(server.address) as channel:
            oip = oip_grpc.GRPCInferenceServiceStub(channel)

            def embed(i: int) -> None:
                client.embed([jpegs[i % len(jpegs)]], model=MODEL, outputs=["embedding"])

            def inferrer(name: str, datatype: str, shape: list[int], contents: list[bytes]) -> Callable[[int], None]:
                """A one-image ModelInfer call of the i-th of `contents` (cycled)."""

                def infer(i: int) -> None:
                    request = oip_pb2.ModelInferRequest(model_name=MODEL)
                    request.inputs.add(name=name, datatype=datatype, shape=shape)
                    request.outputs.add(name="embedding")
                    request.raw_input_contents.append(contents[i % len(contents)])
                    oip.ModelInfer(request, timeout=60)

                return infer

            infer_bytes = inferrer("image", "BYTES", [1], [serialize_bytes([jpeg]) for jpeg in jpegs])
            infer_fp32 = inferrer("image", "FP32", [1, 3, 224, 224], tensors)
            infer_uint8 = inferrer("pixels", "UINT8", [1, 224, 224, 3], crops)

            for call in (embed, infer_bytes, infer_fp32, infer_uint8):
                call(0)  # warm
            for concurrency in (1, 8, 16, 32):
                rows.append(service_row(f"(c) service Embed, c={concurrency}", embed, concurrency, args.seconds, pid))
            for concurrency in (1, 8, 16, 32):
                name = f"(d) service OIP BYTES, c={concurrency}"
                rows.append(service_row(name, infer_bytes, concurrency, args.seconds, pid))
            for concurrency in (1, 8, 16):
                name = f"(e) service OIP FP32 tensors, c={concurrency}"
                rows.append(service_row(name, infer_fp32, concurrency, args.seconds, pid))
            for concurrency in (1, 8, 16):
                name = f"(f) service OIP UINT8 pixels, c={concurrency}"
                rows.append(service_row(name, infer_uint8, concurrency, args.seconds, pid))
    finally:
        server.terminate()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--images", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a server setting")
    args = parser.parse_args()
    version_dir = ensure_repo(args.repo)
    jpegs = [p.read_bytes() for p in sorted(args.images.rglob("*.jpg"))[:256]]
    if not jpegs:
        sys.exit(f"no JPEGs under {args.images}")
    rows = in_process_rows(version_dir, jpegs, args.seconds)
    rows += service_rows(args, version_dir, jpegs)
    by_name = {r["name"]: r for r in rows}

    print(
        f"\nEfficientNet-Lite0, {len(jpegs)} JPEGs from {args.images}, onnxruntime {ort.__version__}, CPU provider, "
        f"{os.cpu_count()} cores, {args.seconds:.0f} s per row, server settings: {args.set or 'defaults'}\n"
    )
    print(f"| {'measurement':<52} | {'images/s':>9} | {'p50 ms':>8} | {'p99 ms':>8} | {'CPU ms/image':>12} |")
    print(f"|{'-' * 54}|{'-' * 10}:|{'-' * 9}:|{'-' * 9}:|{'-' * 13}:|")
    for r in rows:
        print(f"| {r['name']:<52} | {r['ips']:9.1f} | {r['p50']:8.2f} | {r['p99']:8.2f} | {r['cpu_ms']:12.2f} |")
    textbook = by_name["(b+a) textbook in-process: decode + FP32, batch 16"]["ips"]
    raw_best = max(by_name[f"(a) onnxruntime in-process FP32, batch {b}"]["ips"] for b in (1, 8, 16, 32))
    raw_one = by_name["(a) onnxruntime in-process FP32, batch 1"]["p50"]
    decode = by_name["(b) decode + preprocess, 1 image"]["p50"]
    fp32 = {c: by_name[f"(e) service OIP FP32 tensors, c={c}"] for c in (1, 16)}
    embed_one = by_name["(c) service Embed, c=1"]["p50"]
    targets = [
        ("Embed c=16 / textbook", f"{by_name['(c) service Embed, c=16']['ips'] / textbook:.0%}", ">= 110%"),
        ("OIP FP32 c=16 / raw best batch", f"{fp32[16]['ips'] / raw_best:.0%}", ">= 90%"),
        ("OIP FP32 c=1 p50 - raw batch-1 p50", f"{fp32[1]['p50'] - raw_one:.2f} ms", "<= 2 ms"),
        ("Embed c=1 p50 - raw batch-1 p50 - decode p50", f"{embed_one - raw_one - decode:.2f} ms", "<= 2 ms"),
    ]
    print("\n| target | measured | goal |\n|---|--:|--:|")
    for name, measured, goal in targets:
        print(f"| {name} | {measured} | {goal} |")


if __name__ == "__main__":
    main()
