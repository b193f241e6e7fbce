"""The ``offshelf`` command line.

Client commands live here; ``export`` and ``serve`` are handed to their own packages, imported
only when used, so the client commands never load torch or onnxruntime.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import sys
import time

import grpc
import numpy as np
from google.protobuf import json_format

from offshelf.clients import evaluate
from offshelf.clients.client import DEFAULT_MODEL, Client, image_files
from offshelf.clients.connection import Connection
from offshelf.protos.v1 import heads_pb2

DELEGATED = {
    "export": ("offshelf.export.cli", "export a CNN to ONNX into a model repository (needs offshelf[torch])"),
    "serve": ("offshelf.service.cli", "run the gRPC server over a model repository"),
    "train": (
        "offshelf.train.cli",
        "fine-tune a CNN on an image folder, or train it from scratch (needs offshelf[torch])",
    ),
}
EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="offshelf", description="Off-the-shelf CNN features, served.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--server",
        default=os.environ.get("OFFSHELF_SERVER", "localhost:50051"),
        help="server address host:port (default: $OFFSHELF_SERVER or %(default)s)",
    )
    server.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds")
    server.add_argument("--json", action="store_true", help="print the result as JSON (errors too, on stderr)")
    server.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca-cert)")
    server.add_argument("--ca-cert", type=pathlib.Path, metavar="PEM", help="CA certificate for TLS")
    server.add_argument(
        "--token",
        default=os.environ.get("OFFSHELF_TOKEN"),
        help="bearer token sent with every call (default: $OFFSHELF_TOKEN)",
    )
    server.add_argument(
        "--retries", type=int, default=4, help="retries after UNAVAILABLE, with backoff (default: %(default)s)"
    )

    embed = commands.add_parser(
        "embed",
        parents=[server],
        help="embed images with a served model",
        description="Embed images and print each output's size (and top labels for "
        "outputs that score classes), or write the vectors as JSON or .npy.",
    )
    embed.add_argument("images", nargs="+", type=pathlib.Path, metavar="IMAGE")
    embed.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    embed.add_argument("--version", type=int, default=0, help="model version (default: latest)")
    embed.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="NAME",
        help="output to return; repeat for several (default: all)",
    )
    embed.add_argument("--top", type=int, default=3, help="labels to show for class outputs (default: 3)")
    embed.add_argument(
        "--npy", type=pathlib.Path, metavar="FILE", help="save one output's vectors as an (images, dim) .npy array"
    )

    commands.add_parser("models", parents=[server], help="list served models and outputs")

    collection = commands.add_parser("collection", help="create, list, show or delete collections")
    actions = collection.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[server], help="create a collection bound to a model output")
    create.add_argument("name")
    create.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    create.add_argument("--version", type=int, default=0, help="model version (default: latest, fixed at creation)")
    create.add_argument("--output", default="embedding", help="model output to index (default: %(default)s)")
    create.add_argument(
        "--metric",
        choices=["ip", "l2"],
        default="ip",
        help="ip: inner product on L2-normalised vectors (default); l2: Euclidean",
    )
    create.add_argument(
        "--index-type",
        choices=["flat", "hnsw", "ivfpq"],
        default="flat",
        help="flat: exact (default); hnsw: graph; ivfpq: compressed, trained once big enough",
    )
    for action in ("list", "show", "delete"):
        sub = actions.add_parser(action, parents=[server], help=f"{action} collection(s)")
        if action != "list":
            sub.add_argument("name")

    add = commands.add_parser(
        "add",
        parents=[server],
        help="index image files, folders or globs into a collection",
        description="Index images: files, folders (searched recursively for .jpg, .jpeg, .png, .webp, .gif) "
        "or quoted glob patterns such as 'photos/**/*.jpg'. Ids are the file paths; labels the parent "
        "folder names.",
    )
    add.add_argument("paths", nargs="+", metavar="PATH")
    add.add_argument("--collection", required=True)
    add.add_argument("--batch-size", type=int, default=32, help="images per Add request (default: %(default)s)")

    search = commands.add_parser("search", parents=[server], help="find the nearest indexed images to an image")
    search.add_argument("image", type=pathlib.Path, metavar="IMAGE")
    search.add_argument("--collection", required=True)
    search.add_argument("-k", type=int, default=5, help="results (default: %(default)s)")
    search.add_argument("--flip", action="store_true", help="average the query with its mirror image")

    evaluate = commands.add_parser(
        "eval",
        parents=[server],
        help="retrieval score on UKBench or INRIA Holidays",
        description="Index the dataset into a temporary collection through the server, "
        "query it and print the score: UKBench N-S (out of 4) or Holidays mAP.",
    )
    evaluate.add_argument("dataset", choices=["ukbench", "holidays"])
    evaluate.add_argument("folder", type=pathlib.Path, metavar="DIR")
    evaluate.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    evaluate.add_argument("--output", default="embedding", help="model output (default: %(default)s)")
    evaluate.add_argument("--index-type", choices=["flat", "hnsw", "ivfpq"], default="flat")
    evaluate.add_argument("--flip", action="store_true", help="query with images and their mirror images")
    evaluate.add_argument(
        "--plot",
        type=pathlib.Path,
        metavar="FILE",
        help="write a PNG: N-S histogram (ukbench) or precision-recall (holidays)",
    )

    head = commands.add_parser("head", help="train, list, show or delete classification heads")
    head_actions = head.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = head_actions.add_parser(
        "train",
        parents=[server],
        help="train a head in the server's background",
        description="Train a head on labelled images (class folders: DIR/<label>/*.jpg) "
        "or on a collection's labelled items, and wait for it.",
    )
    train.add_argument("name")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=pathlib.Path, metavar="DIR", help="class folders of images")
    source.add_argument("--collection", help="a collection with labelled items")
    train.add_argument("--kind", choices=["logreg", "linear-svm", "ncm"], default="logreg")
    train.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    train.add_argument("--output", default="embedding", help="model output (default: %(default)s)")
    train.add_argument("--add-classes", action="store_true", help="ncm: keep the served classes, add these")
    for action in ("list", "show", "delete"):
        sub = head_actions.add_parser(action, parents=[server], help=f"{action} head(s)")
        if action != "list":
            sub.add_argument("name")

    classify = commands.add_parser("classify", parents=[server], help="top labels of images from a head")
    classify.add_argument("images", nargs="+", type=pathlib.Path, metavar="IMAGE")
    classify.add_argument("--head", required=True)
    classify.add_argument("-k", type=int, default=3, help="labels per image (default: %(default)s)")
    classify.add_argument("--augmentation", choices=["none", "flip", "10crop"], default="none")

    health = commands.add_parser(
        "health",
        parents=[server],
        help="print the server's health status",
        description="Exit 0 when SERVING, 1 otherwise.",
    )
    health.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="keep asking until SERVING or SECONDS have passed"
    )
    return p


def run_embed(args: argparse.Namespace, client: Client) -> int:
    if args.npy and args.json:
        return report(args, "USAGE", "error: --npy and --json both say where the vectors go; pick one", EXIT_USAGE)
    if args.npy and len(args.output) != 1:
        return report(args, "USAGE", "error: --npy saves one output; name it with --output", EXIT_USAGE)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        return report(args, "USAGE", f"error: no such file: {', '.join(missing)}", EXIT_USAGE)
    arrays = client.embed(args.images, model=args.model, outputs=args.output, version=args.version)
    if args.npy:
        np.save(args.npy, arrays[args.output[0]])
        print(f"saved {arrays[args.output[0]].shape} float32 to {args.npy}")
    elif args.json:
        print(
            json.dumps(
                [
                    {"image": str(path), "outputs": {name: a[i].tolist() for name, a in arrays.items()}}
                    for i, path in enumerate(args.images)
                ]
            )
        )
    else:
        labels = _labels(client, args.model, args.version)
        for i, path in enumerate(args.images):
            print(path)
            for name, array in arrays.items():
                vector = array[i]
                line = f"  {name}: dim {len(vector)}, L2 norm {np.linalg.norm(vector):.3f}"
                if name in labels and args.top > 0:
                    probabilities = np.exp(vector - vector.max())
                    probabilities /= probabilities.sum()
                    best = np.argsort(-probabilities)[: args.top]
                    line += ", top: " + ", ".join(f"{labels[name][k]} ({k}) {probabilities[k]:.2f}" for k in best)
                print(line)
    return 0


def _labels(client: Client, model: str, version: int) -> dict[str, list[str]]:
    for info in client.list_models():
        if info.name == model:
            served = info.versions[-1] if version == 0 else next(v for v in info.versions if v.version == version)
            return {o.name: list(o.labels) for o in served.outputs if o.labels}
    return {}


def run_models(args: argparse.Namespace, client: Client) -> int:
    infos = client.list_models()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "versions": [
                            {
                                "version": v.version,
                                "architecture": v.architecture,
                                "provider": v.execution_provider,
                                "input": [v.input_height, v.input_width],
                                "outputs": [
                                    {
                                        "name": o.name,
                                        "dim": o.dim,
                                        "layer": o.layer,
                                        "pooling": o.pooling,
                                        "l2_normalized": o.l2_normalized,
                                    }
                                    for o in v.outputs
                                ],
                            }
                            for v in m.versions
                        ],
                    }
                    for m in infos
                ],
                indent=2,
            )
        )
        return 0
    for m in infos:
        for v in m.versions:
            outputs = ", ".join(f"{o.name} ({o.dim})" for o in v.outputs)
            print(
                f"{m.name} v{v.version}  {v.architecture}  {v.input_height}x{v.input_width}  "
                f"{v.execution_provider}  outputs: {outputs}"
            )
    return 0


def message_dict(c) -> dict:
    return json_format.MessageToDict(c, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def run_collection(args: argparse.Namespace, client: Client) -> int:
    if args.action == "create":
        info = client.create_collection(
            args.name,
            model=args.model,
            version=args.version,
            output=args.output,
            metric=args.metric,
            index_type=args.index_type,
        )
        if args.json:
            print(json.dumps(message_dict(info), indent=2))
        else:
            print(
                f"created {info.name}: {info.binding.model} v{info.binding.version} {info.binding.output} "
                f"({info.binding.dim}-d), {info.index_type}"
            )
    elif args.action == "list":
        infos = client.list_collections()
        if args.json:
            print(json.dumps([message_dict(c) for c in infos], indent=2))
        for c in [] if args.json else infos:
            print(
                f"{c.name}  {c.count} items  {c.index_type}  {c.binding.model} v{c.binding.version} "
                f"{c.binding.output}  {c.bytes_on_disk / 1e6:.1f} MB"
            )
    elif args.action == "show":
        print(json.dumps(message_dict(client.get_collection(args.name)), indent=2))
    else:
        client.delete_collection(args.name)
        print(json.dumps({"deleted": args.name}) if args.json else f"deleted {args.name}")
    return 0


def run_add(args: argparse.Namespace, client: Client) -> int:
    files = image_files(args.paths)
    if not files:
        return report(args, "USAGE", "error: no images found", EXIT_USAGE)
    client.add_images(
        args.collection,
        files,
        ids=[str(f) for f in files],
        labels=[f.parent.name for f in files],
        batch_size=args.batch_size,
        progress=not args.json,
    )
    count = client.get_collection(args.collection).count
    if args.json:
        print(json.dumps({"collection": args.collection, "added": len(files), "count": count}))
    else:
        print(f"added {len(files)} images; {args.collection} holds {count}")
    return 0


def run_search(args: argparse.Namespace, client: Client) -> int:
    hits = client.search(args.collection, image=args.image, k=args.k, flip=args.flip)
    if args.json:
        print(json.dumps([hit.__dict__ for hit in hits]))
        return 0
    print(args.image)
    for rank, hit in enumerate(hits, 1):
        print(f"  {rank:2d}. {hit.score:7.4f}  {hit.id}" + (f"  [{hit.label}]" if hit.label else ""))
    return 0


def run_eval(args: argparse.Namespace, client: Client) -> int:
    dataset = evaluate.ukbench(args.folder) if args.dataset == "ukbench" else evaluate.holidays(args.folder)
    with evaluate.temporary_collection(client, dataset, args.model, args.output, args.index_type) as name:
        if args.dataset == "ukbench":
            result = evaluate.ns_score(client, name, dataset, flip=args.flip)
        else:
            result = evaluate.mean_average_precision(client, name, dataset, flip=args.flip)
    if args.plot:
        evaluate.plot(result, args.plot)
    if args.json:
        print(
            json.dumps(
                {
                    "metric": result.name,
                    "score": result.score,
                    "queries": len(result.per_query),
                    "images": len(dataset.paths),
                }
            )
        )
    else:
        print(
            f"{result.name}: {result.score:.3f} ({len(result.per_query)} queries, {len(dataset.paths)} images, "
            f"{args.model} {args.output}{', flip' if args.flip else ''})"
        )
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def run_head(args: argparse.Namespace, client: Client) -> int:
    if args.action == "train":
        if args.images:
            files = image_files([args.images])
            client.train_head(
                args.name,
                args.kind,
                images=files,
                labels=[f.parent.name for f in files],
                model=args.model,
                output=args.output,
                add_classes=args.add_classes,
            )
        else:
            client.train_head(args.name, args.kind, collection=args.collection, add_classes=args.add_classes)
        head = client.wait_for_head(args.name, timeout=args.timeout * 100)
        card = head.card
        if args.json:
            print(json.dumps(message_dict(head), indent=2))
            return 0
        print(
            f"{card.name} v{card.version} ({card.kind}): {len(card.labels)} classes, {card.metrics.examples} "
            f"examples, cross-validated accuracy {card.metrics.cv_accuracy:.3f} ({card.metrics.folds} folds)"
        )
    elif args.action == "list":
        heads = client.list_heads()
        if args.json:
            print(json.dumps([message_dict(h) for h in heads], indent=2))
        for h in [] if args.json else heads:
            state = heads_state(h)
            print(
                f"{h.job.head}  v{h.card.version or '-'}  {h.card.kind or '-'}  {len(h.card.labels)} classes  {state}"
            )
    elif args.action == "show":
        print(json.dumps(message_dict(client.get_head(args.name)), indent=2))
    else:
        client.delete_head(args.name)
        print(json.dumps({"deleted": args.name}) if args.json else f"deleted {args.name}")
    return 0


def heads_state(head) -> str:
    return heads_pb2.JobState.Name(head.job.state).removeprefix("JOB_STATE_").lower()


def run_classify(args: argparse.Namespace, client: Client) -> int:
    results = client.classify(args.images, args.head, k=args.k, augmentation=args.augmentation)
    if args.json:
        print(
            json.dumps(
                [
                    {"image": str(p), "top": [{"label": label, "probability": prob} for label, prob in top]}
                    for p, top in zip(args.images, results, strict=True)
                ]
            )
        )
        return 0
    for path, top in zip(args.images, results, strict=True):
        print(f"{path}: " + ", ".join(f"{label} {prob:.3f}" for label, prob in top))
    return 0


def run_health(args: argparse.Namespace, client: Client) -> int:
    deadline = time.monotonic() + args.wait
    while True:
        try:
            status = client.health()
        except grpc.RpcError as err:
            if time.monotonic() >= deadline:
                raise
            status = err.code().name
        if status == "SERVING" or time.monotonic() >= deadline:
            print(json.dumps({"status": status}) if args.json else status)
            return 0 if status == "SERVING" else EXIT_SERVER_ERROR
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args = parser().parse_args(argv)
    run = {
        "embed": run_embed,
        "models": run_models,
        "health": run_health,
        "collection": run_collection,
        "add": run_add,
        "search": run_search,
        "eval": run_eval,
        "head": run_head,
        "classify": run_classify,
    }[args.command]
    try:
        connection = Connection(args.server, tls=args.tls, ca_cert=args.ca_cert, token=args.token, retries=args.retries)
        with Client(connection, timeout=args.timeout) as client:
            return run(args, client)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        return report(args, "USAGE", f"error: {err}", EXIT_USAGE)
    except grpc.RpcError as err:
        unreachable = err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return report(args, err.code().name, err.details(), EXIT_UNREACHABLE if unreachable else EXIT_SERVER_ERROR)


def report(args: argparse.Namespace, code: str, message: str, exit_code: int) -> int:
    """Prints an error on stderr (as JSON with --json) and returns the exit code."""
    if args.json:
        print(json.dumps({"error": code, "message": message}), file=sys.stderr)
    else:
        print(f"offshelf {args.command}: {message if code == 'USAGE' else f'{code}: {message}'}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
