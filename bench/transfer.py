"""Transfer learning on ../shared/data: from scratch, off-the-shelf features + heads through the service,
and fine-tuning. Prints one table of accuracy and wall time.

Usage: python bench/transfer.py [--quick] [--data DIR]
--quick: cats_vs_dogs-400 and hymenoptera only, fewer epochs (4 minutes on 2 CPU cores; the full run 32).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

from offshelf.clients import Client
from offshelf.export.zoo import build_network
from offshelf.train.data import load_splits
from offshelf.train.finetune import FinetuneConfig, finetune

from common import ServerProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def paths_and_labels(subset) -> tuple[list[pathlib.Path], list[str]]:
    """Files and class names of an ImageFolder or a Subset of one."""
    indices = list(range(len(subset)))
    while hasattr(subset, "indices"):
        indices = [subset.indices[i] for i in indices]
        subset = subset.dataset
    return (
        [pathlib.Path(subset.samples[i][0]) for i in indices],
        [subset.classes[subset.samples[i][1]] for i in indices],
    )


def heads_rows(client: Client, name: str, train, val) -> list[tuple[str, float | None, float]]:
    """Indexes the labelled training images once, then trains each kind of head from that collection."""
    train_paths, train_labels = paths_and_labels(train)
    val_paths, val_labels = paths_and_labels(val)
    started = time.perf_counter()
    client.create_collection(name)
    ids = [f"{label}/{path.name}" for path, label in zip(train_paths, train_labels, strict=True)]  # names repeat
    client.add_images(name, train_paths, ids=ids, labels=train_labels, progress=False)
    rows = [
        ("embedding + indexing the training images (service, shared by the heads)", None, time.perf_counter() - started)
    ]
    for kind in ("logreg", "linear-svm", "ncm"):
        started = time.perf_counter()
        client.train_head(f"{name}-{kind}", kind, collection=name)
        client.wait_for_head(f"{name}-{kind}", timeout=3600)
        predicted = [
            top[0].label
            for start in range(0, len(val_paths), 32)
            for top in client.classify(val_paths[start : start + 32], f"{name}-{kind}", k=1)
        ]
        accuracy = float(np.mean([p == t for p, t in zip(predicted, val_labels, strict=True)]))
        rows.append((f"off-the-shelf + {kind} (service)", accuracy, time.perf_counter() - started))
        print(f"  {name}: {kind} {accuracy:.4f}", flush=True)
    return rows


def training_row(label: str, config: FinetuneConfig) -> tuple[str, float, float]:
    started = time.perf_counter()
    history = finetune(config, log=lambda _: None)
    accuracy = history.best_accuracy
    print(f"  {label}: {accuracy:.4f} after {len(history.val_loss)} epochs", flush=True)
    return label, accuracy, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    begun = time.perf_counter()
    experiments = [("cats_vs_dogs-400", args.data / "cats_vs_dogs", 200), ("hymenoptera", args.data / "hymenoptera", 0)]
    if not args.quick:
        experiments[1:1] = [("cats_vs_dogs-2000", args.data / "cats_vs_dogs", 1000)]
        experiments.append(("flowers", args.data / "flowers", 0))
    epochs, patience = (2, 1) if args.quick else (8, 2)
    scratch_epochs = 2 if args.quick else 4  # at chance either way on these small sets (see docs/transfer.md)
    repo = ROOT / "build" / "repo"
    if not (repo / "efficientnet-lite0" / "1" / "model.onnx").exists():
        sys.exit("export the default model first: offshelf export efficientnet-lite0 --repo build/repo")
    pre = build_network("efficientnet-lite0").preprocessing
    work = pathlib.Path(tempfile.mkdtemp(prefix="offshelf-transfer-"))
    server = ServerProcess(repo, work / "data", drain_seconds=0)
    table = []
    try:
        server.wait_serving()
        with Client(server.address, timeout=600) as client:
            for name, folder, limit in experiments:
                train, val, _ = load_splits(folder, pre, False, 0.2, limit)
                print(f"{name}: {len(train)} training, {len(val)} validation images", flush=True)
                common = {"data": folder, "limit_per_class": limit, "epochs": epochs, "patience": patience}
                rows = [
                    training_row(
                        "from scratch (mobilenet_v3_small, random init)",
                        FinetuneConfig(
                            out=work / f"{name}-scratch",
                            architecture="mobilenet_v3_small",
                            weights="random",
                            lr_head=1e-3,
                            lr_backbone=1e-3,
                            **{**common, "epochs": scratch_epochs},
                        ),
                    )
                ]
                rows += heads_rows(client, name, train, val)
                rows.append(
                    training_row(
                        "fine-tuned (last 4 blocks + head, early stopping)",
                        FinetuneConfig(
                            out=work / f"{name}-finetuned",
                            freeze="_blocks.11",
                            lr_head=1e-4,
                            lr_backbone=1e-5,
                            **common,
                        ),
                    )
                )
                table += [(name, *row) for row in rows]
    finally:
        server.terminate()
    print(
        f"\nEfficientNet-Lite0 (ImageNet) unless noted; accuracy on the held-out images; CPU, "
        f"{'quick' if args.quick else 'full'} run\n"
    )
    print("| dataset | method | accuracy | wall s |")
    print("|---|---|---|---|")
    for name, method, accuracy, seconds in table:
        print(f"| {name} | {method} | {'' if accuracy is None else f'{accuracy:.2%}'} | {seconds:.0f} |")
    print(f"\ntotal {(time.perf_counter() - begun) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
