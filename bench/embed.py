"""Embedding throughput and latency: onnxruntime in-process, decode + preprocess, and the service end to end
(Embed, and ModelInfer of the Open Inference Protocol).

Prints one table. Usage: python bench/embed.py [--repo DIR] [--images DIR] [--seconds S]
The model repository defaults to build/repo (``make demo`` writes it), exported if missing.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from offshelf.clients import Client  # noqa: E402
from offshelf.protos.inference import grpc_predict_v2_pb2 as oip_pb2  # noqa: E402
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc  # noqa: E402
from offshelf.service.api.oip import serialize_bytes  # noqa: E402
from offshelf.service.models.preprocess import Preprocessor  # noqa: E402
from offshelf.service.models.registry import read_card  # noqa: E402

from support import ServerProcess  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def timed(call, seconds: float) -> list[float]:
    """Calls repeatedly for about `seconds`; returns each call's duration."""
    durations: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(durations) < 3:
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return durations


def row(name: str, images_per_call: int, durations: list[float], wall: float | None = None) -> dict:
    wall = wall if wall is not None else sum(durations)
    return {
        "name": name,
        "ips": images_per_call * len(durations) / wall,
        "p50": percentile(durations, 50),
        "p99": percentile(durations, 99),
    }


def concurrent_row(name: str, call, concurrency: int, args: argparse.Namespace) -> dict:
    """`concurrency` threads each send one-image requests for args.seconds."""

    def worker(w: int) -> list[float]:
        end, durations = time.perf_counter() + args.seconds, []
        while time.perf_counter() < end:
            started = time.perf_counter()
            call(w * 1000 + len(durations))
            durations.append(time.perf_counter() - started)
        return durations

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        durations = [d for ds in pool.map(worker, range(concurrency)) for d in ds]
    return row(name, 1, durations, time.perf_counter() - started)


def ensure_repo(repo: pathlib.Path) -> pathlib.Path:
    if not (repo / "efficientnet-lite0" / "1" / "model.onnx").exists():
        from offshelf.export.repository import ExportRequest, export_model
        from offshelf.export.zoo import build_network

        export_model(ExportRequest(build_network("efficientnet-lite0"), repo, "efficientnet-lite0"))
    return repo / "efficientnet-lite0" / "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--images", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    args = parser.parse_args()
    version_dir = ensure_repo(args.repo)
    card = read_card(version_dir)
    jpegs = [p.read_bytes() for p in sorted(args.images.rglob("*.jpg"))[:256]]
    if not jpegs:
        sys.exit(f"no JPEGs under {args.images}")
    pre = Preprocessor(card.preprocessing, 10**8)
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = []

    for batch in (1, 8, 32):
        tensors = {"image": np.stack([pre(jpegs[i % len(jpegs)]) for i in range(batch)])}
        session.run(None, tensors)
        rows.append(
            row(
                f"(a) onnxruntime in-process, batch {batch}",
                batch,
                timed(lambda t=tensors: session.run(None, t), args.seconds),
            )
        )

    counter = iter(range(10**9))
    rows.append(
        row("(b) decode + preprocess, 1 image", 1, timed(lambda: pre(jpegs[next(counter) % len(jpegs)]), args.seconds))
    )

    def decode_and_infer(batch: int = 16) -> None:
        start = next(counter)
        session.run(None, {"image": np.stack([pre(jpegs[(start + i) % len(jpegs)]) for i in range(batch)])})

    in_process = row("(b+a) decode + onnxruntime in-process, batch 16", 16, timed(decode_and_infer, args.seconds))
    rows.append(in_process)

    server = ServerProcess(
        args.repo, pathlib.Path(tempfile.mkdtemp()), max_batch_size=16, max_batch_delay_ms=2, drain_seconds=0
    )
    try:
        server.wait_serving()
        with Client(server.address, timeout=60) as client, grpc.insecure_channel(server.address) as channel:
            oip = oip_grpc.GRPCInferenceServiceStub(channel)
            client.embed([jpegs[0]], outputs=["embedding"])

            def embed(i: int) -> None:
                client.embed([jpegs[i % len(jpegs)]], outputs=["embedding"])

            def infer(i: int) -> None:
                request = oip_pb2.ModelInferRequest(model_name="efficientnet-lite0")
                request.inputs.add(name="image", datatype="BYTES", shape=[1])
                request.outputs.add(name="embedding")
                request.raw_input_contents.append(serialize_bytes([jpegs[i % len(jpegs)]]))
                oip.ModelInfer(request, timeout=60)

            for concurrency in (1, 8, 16):
                rows.append(concurrent_row(f"(c) service Embed, concurrency {concurrency}", embed, concurrency, args))
            rows.append(concurrent_row("(d) service OIP ModelInfer BYTES, concurrency 16", infer, 16, args))
    finally:
        server.terminate()

    print(
        f"\nEfficientNet-Lite0, {len(jpegs)} JPEGs from {args.images}, onnxruntime {ort.__version__}, "
        f"CPU provider, {args.seconds:.0f} s per row\n"
    )
    print(f"| {'measurement':<50} | {'images/s':>9} | {'p50 ms':>8} | {'p99 ms':>8} |")
    print(f"|{'-' * 52}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    for r in rows:
        print(f"| {r['name']:<50} | {r['ips']:9.1f} | {r['p50']:8.2f} | {r['p99']:8.2f} |")
    ratio = rows[-2]["ips"] / in_process["ips"]
    print(f"\nEmbed at concurrency 16 / in-process decode + inference: {ratio:.0%} (target >= 70%)")
    print(f"ModelInfer (OIP) at concurrency 16 / Embed at concurrency 16: {rows[-1]['ips'] / rows[-2]['ips']:.0%}")


if __name__ == "__main__":
    main()
