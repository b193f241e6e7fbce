"""Retrieval quality through the service: UKBench N-S on the shared 500 images for each model x preprocessing x
pooling, plain, with alpha query expansion, and PCA-whitened on an independent set of photos.

For each model (EfficientNet-Lite0/1/2) and preprocessing (crop: the network's resize and centre crop; no-crop: the
shorter side to the crop size, the whole photo kept) it exports one graph with three pooled outputs of the last
feature map (avg = the default `embedding`, GeM p=3, and R-MAC for crop; R-MAC's regions are fixed to one input
size), serves it, and per output: indexes UKBench and scores N-S without and with alpha query expansion (n = 1, 2);
with database-side augmentation (n = 1) of a second copy, without and with query expansion; then learns a 512-d
PCA-whitening from an independent set (cats_vs_dogs validation and hymenoptera: other photos,
other objects) and scores again. ms/image: the server's wall time to index one UKBench photo (decode, inference,
add), 4 client threads, CPU provider.
Usage: python bench/retrieval.py [--models efficientnet-lite0,...] [--ukbench DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

from offshelf.clients import Client, evaluate
from offshelf.export.repository import ExportRequest, export_model
from offshelf.export.taps import OutputRequest
from offshelf.export.zoo import build_network

from common import SHARED_DATA, ServerProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent

PREPROCESSING = ("crop", "no-crop")
WHITENING_DIM = 512


def outputs(preprocess: str) -> list[OutputRequest]:
    taps = [
        OutputRequest("logits", "_fc"),
        OutputRequest("embedding", "_avg_pooling"),
        OutputRequest("gem", "_head_act", "gem", l2=True),
    ]
    return taps + ([OutputRequest("rmac", "_head_act", "rmac", l2=True)] if preprocess == "crop" else [])


def independent_photos() -> list[pathlib.Path]:
    folders = [SHARED_DATA / "cats_vs_dogs" / "validation", SHARED_DATA / "hymenoptera"]
    return sorted(p for folder in folders for p in folder.rglob("*.jpg"))


def rows_of(model: str, preprocess: str, work: pathlib.Path, dataset: evaluate.Dataset) -> list[dict]:
    repo = work / f"{model}-{preprocess}"
    export_model(
        ExportRequest(build_network(model), repo, model, outputs=outputs(preprocess), preprocess=preprocess),
        log=lambda _: None,
    )
    server = ServerProcess(repo, work / f"data-{model}-{preprocess}", drain_seconds=0, repository_poll_seconds=0)
    rows = []
    try:
        server.wait_serving(300)
        with Client(server.address, timeout=600) as client:
            for tap in outputs(preprocess)[1:]:
                name, other = f"ukbench-{tap.name}", f"independent-{tap.name}"
                client.create_collection(name, model=model, output=tap.name)
                started = time.perf_counter()
                client.add_images(name, dataset.paths, ids=[str(i) for i in range(len(dataset.paths))])
                ms = (time.perf_counter() - started) / len(dataset.paths) * 1000
                row = {"model": model, "preprocess": preprocess, "output": tap.name, "ms": ms}
                for qe in (0, 1, 2):
                    row[f"qe{qe}"] = evaluate.ns_score(client, name, dataset, qe=qe).score
                augmented = f"augmented-{tap.name}"
                client.create_collection(augmented, model=model, output=tap.name)
                client.add_images(augmented, dataset.paths, ids=[str(i) for i in range(len(dataset.paths))])
                client.augment_database(augmented, neighbours=1)
                for qe in (0, 1):
                    row[f"dba-qe{qe}"] = evaluate.ns_score(client, augmented, dataset, qe=qe).score
                client.create_collection(other, model=model, output=tap.name)
                client.add_images(other, independent_photos())
                client.train_whitening(name, dim=WHITENING_DIM, learn_from=other)
                for qe in (0, 1):
                    row[f"pcaw-qe{qe}"] = evaluate.ns_score(client, name, dataset, qe=qe).score
                rows.append(row)
                print(row, flush=True)
    finally:
        server.terminate()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet-lite0,efficientnet-lite1,efficientnet-lite2")
    parser.add_argument("--ukbench", type=pathlib.Path, default=SHARED_DATA / "ukbench")
    args = parser.parse_args()
    dataset = evaluate.ukbench(args.ukbench)
    work = pathlib.Path(tempfile.mkdtemp())
    rows = [
        row
        for model in args.models.split(",")
        for preprocess in PREPROCESSING
        for row in rows_of(model, preprocess, work, dataset)
    ]
    print(
        f"\nUKBench N-S through the service, {len(dataset.paths)} images (every one a query, top 4); alpha = 3; "
        f"PCAw: {WHITENING_DIM}-d, learned on {len(independent_photos())} other photos\n"
    )
    print(
        "| model | preprocess | pooling | ms/image | N-S | αQE n=1 | αQE n=2 | DBA n=1 | DBA + αQE n=1 | PCAw | "
        "PCAw + αQE n=1 |"
    )
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    pooling = {"embedding": "avg", "gem": "GeM", "rmac": "R-MAC"}
    for r in rows:
        print(
            f"| {r['model']} | {r['preprocess']} | {pooling[r['output']]} | {r['ms']:.1f} | {r['qe0']:.3f} | "
            f"{r['qe1']:.3f} | {r['qe2']:.3f} | {r['dba-qe0']:.3f} | {r['dba-qe1']:.3f} | {r['pcaw-qe0']:.3f} | "
            f"{r['pcaw-qe1']:.3f} |"
        )


if __name__ == "__main__":
    main()
