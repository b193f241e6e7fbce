"""UKBench N-S of EfficientNet-Lite0 outputs (embedding / GeM / R-MAC) at fp32, fp16 and int8.

Exports one model per precision with the three outputs, serves them, and scores each output
through the service. Prints one table with export time and model size.
Usage: python bench/export_retrieval.py [--ukbench DIR] [--calibrate DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

from offshelf.clients import Client, evaluate
from offshelf.export.repository import ExportRequest, export_model, images_in
from offshelf.export.taps import parse_output
from offshelf.export.zoo import build_network

from common import ServerProcess, read_card

ROOT = pathlib.Path(__file__).resolve().parent.parent

OUTPUTS = ["embedding=_head_act:avg", "gem=_head_act:gem:l2", "rmac=_head_act:rmac:l2", "logits=_fc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ukbench", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    parser.add_argument("--calibrate", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "flowers")
    parser.add_argument("--check", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "cats_vs_dogs")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="offshelf-bench-"))
    exports, agreements = {}, {}
    for precision in ("fp32", "fp16", "int8"):
        started = time.perf_counter()
        target = export_model(
            ExportRequest(
                build_network("efficientnet-lite0"),
                work / "repo",
                f"lite0-{precision}",
                outputs=[parse_output(o) for o in OUTPUTS],
                precision=precision,
                force=True,
                check_images=images_in(args.check, 64),
                calibration_images=images_in(args.calibrate, 128) if precision == "int8" else [],
            ),
            log=lambda _: None,
        )
        exports[precision] = (time.perf_counter() - started, (target / "model.onnx").stat().st_size / 2**20)
        agreements[precision] = read_card(target).agreement
        print(f"exported {precision} in {exports[precision][0]:.0f} s", flush=True)
    dataset = evaluate.ukbench(args.ukbench)
    server = ServerProcess(work / "repo", work / "data", drain_seconds=0)
    rows = []
    try:
        server.wait_serving()
        with Client(server.address, timeout=120) as client:
            for precision in exports:
                for output in ("embedding", "gem", "rmac"):
                    with evaluate.temporary_collection(client, dataset, f"lite0-{precision}", output, "flat") as name:
                        score = evaluate.ns_score(client, name, dataset).score
                    rows.append((output, precision, score))
    finally:
        server.terminate()
    print(f"\nUKBench N-S on {len(dataset.paths)} images ({args.ukbench}), EfficientNet-Lite0, flat inner product\n")
    print("| output    | precision | N-S   | export s | model MB |")
    print("|-----------|-----------|-------|----------|----------|")
    for output, precision, score in rows:
        seconds, size = exports[precision]
        print(f"| {output:<9} | {precision:<9} | {score:.3f} | {seconds:8.0f} | {size:8.1f} |")
    print()
    for precision in ("fp16", "int8"):
        a = agreements[precision]
        print(
            f"{precision}: top-1 agreement with fp32 {a.top1:.1%} on {a.images} check photos "
            f"(gate {a.threshold:.0%}{', written by --force' if a.forced else ''})"
        )


if __name__ == "__main__":
    main()
