"""The ``offshelf`` command line.

Each client command is a pair, ``add_<command>`` (its arguments) and ``run_<command>`` (the calls), named in
COMMANDS; results are printed by ``show`` alone, as JSON with --json or as text. ``export``, ``serve`` and
``train`` are handed to their own packages, imported only when used, so the client commands never load torch
or onnxruntime.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import metadata
from typing import Any, NamedTuple, TypeVar

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from tqdm import tqdm

from offshelf.clients import evaluate, sidecar
from offshelf.clients.client import DEFAULT_MODEL, Client, Hit, StoredItem
from offshelf.clients.connection import Connection
from offshelf.clients.errors import DeadlineExceeded, NotFound, OffshelfError, Unavailable
from offshelf.clients.image_files import image_files, image_paths
from offshelf.protos.v1 import embedding_pb2, heads_pb2, index_pb2

DELEGATED = {
    "export": ("offshelf.export.cli", "export a CNN to ONNX into a model repository (needs offshelf[torch])"),
    "serve": ("offshelf.service.cli", "run the gRPC server over a model repository"),
    "train": (
        "offshelf.train.cli",
        "fine-tune a CNN on an image folder, or train it from scratch (needs offshelf[torch])",
    ),
}

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_NOT_SERVING = 0, 1, 2, 3, 4
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_REFUSED: "the server answered with an error, or a head's training failed (status and message on stderr)",
    EXIT_USAGE: "usage error: bad flags, a missing or unreadable file, no images found, a bad setting of serve",
    EXIT_NO_ANSWER: "no answer: the server is unreachable or overloaded (UNAVAILABLE), or the deadline passed",
    EXIT_NOT_SERVING: "health: the server answered, but is not SERVING",
    EXIT_STDOUT_CLOSED: "stdout was closed before everything was printed (e.g. piped into head)",
}


class UsageError(Exception):
    """A command line that cannot work as given; the message says how to fix it."""


class NotServing(Exception):
    """health: the server answered with a status other than SERVING."""


class Shown(NamedTuple):
    """One result as both outputs print it."""

    data: Any  # printed as JSON with --json
    text: str  # printed otherwise


def show(args: argparse.Namespace, result: Shown | Iterable[Shown]) -> None:
    """Prints a result, or a stream of them, as JSON with --json, else as text. A stream is printed as it comes
    (as one JSON array, an item per line), so embedding many images never holds every vector at once."""
    if isinstance(result, Shown):
        print(json.dumps(result.data, indent=2) if args.json else result.text)
    elif not args.json:
        for item in result:
            print(item.text)
    else:
        separator = "[\n"
        for item in result:
            sys.stdout.write(separator + json.dumps(item.data))
            separator = ",\n"
        print("[]" if separator == "[\n" else "\n]")


def message_dict(message: Message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


T = TypeVar("T")


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def require_files(paths: Iterable[pathlib.Path]) -> None:
    """Checks every file before the first request, so a typo does not end a long run halfway."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, not {text!r}")
    return value


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For commands that take only the connection options."""


def add_batch_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        metavar="N",
        help="images per request, at most the server's max_images_per_request (default: %(default)s)",
    )


def meta_pair(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, not {text!r}")
    return key, value


def add_filters(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="LABEL",
        help=f"only {what} with this label; repeat to accept several",
    )
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        type=meta_pair,
        metavar="KEY=VALUE",
        help=f"only {what} whose metadata KEY is VALUE; repeat a key to accept several values, give several keys "
        "to require each",
    )


def metadata_filter(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """--meta KEY=VALUE pairs as the SDK's filter: each key with its accepted values."""
    accepted: dict[str, list[str]] = {}
    for key, value in pairs:
        accepted.setdefault(key, []).append(value)
    return accepted


# --- embed -------------------------------------------------------------------------------------


def add_embed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=pathlib.Path, metavar="IMAGE")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    parser.add_argument("--version", type=int, default=0, help="model version (default: latest)")
    parser.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="NAME",
        help="output to return; repeat for several (default: all)",
    )
    parser.add_argument("--top", type=int, default=3, help="labels to show for class outputs (default: 3)")
    parser.add_argument(
        "--npy", type=pathlib.Path, metavar="FILE", help="save one output's vectors as an (images, dim) .npy array"
    )
    add_batch_size(parser)


def run_embed(args: argparse.Namespace, client: Client) -> None:
    if args.npy and args.json:
        raise UsageError("--npy and --json both say where the vectors go; pick one")
    if args.npy and len(args.output) != 1:
        raise UsageError("--npy saves one output; name it with --output")
    require_files(args.images)
    if args.npy:
        vectors = np.stack([outputs[args.output[0]] for _, outputs in embedded(args, client)])
        np.save(args.npy, vectors)
        saved = Shown({"npy": str(args.npy), "shape": vectors.shape}, f"saved {vectors.shape} float32 to {args.npy}")
        show(args, saved)
        return
    labels = class_labels(client, args.model, args.version)
    show(args, (embedded_image(path, outputs, labels, args.top) for path, outputs in embedded(args, client)))


def embedded(args: argparse.Namespace, client: Client) -> Iterator[tuple[pathlib.Path, dict[str, np.ndarray]]]:
    """(image, its vector of each output), a request of --batch-size images at a time: files are read per batch."""
    for paths in batched(args.images, args.batch_size):
        arrays = client.embed(paths, model=args.model, outputs=args.output, version=args.version)
        for i, path in enumerate(paths):
            yield path, {name: array[i] for name, array in arrays.items()}


def class_labels(client: Client, model: str, version: int) -> dict[str, list[str]]:
    """Output name -> class names, for the outputs that score classes; empty when the model is not served (the
    Embed call then says so)."""
    served = [v for m in client.list_models() if m.name == model for v in m.versions if version in (0, v.version)]
    return {o.name: list(o.labels) for o in served[-1].outputs if o.labels} if served else {}


def embedded_image(path: pathlib.Path, outputs: dict[str, np.ndarray], labels: dict[str, list[str]], top: int) -> Shown:
    data = {"image": str(path), "outputs": {name: vector.tolist() for name, vector in outputs.items()}}
    lines = [str(path)] + [
        f"  {name}: {describe(vector, labels.get(name, []), top)}" for name, vector in outputs.items()
    ]
    return Shown(data, "\n".join(lines))


def describe(vector: np.ndarray, labels: list[str], top: int) -> str:
    """Size and norm, and for class scores the top labels with softmax probabilities."""
    text = f"dim {len(vector)}, L2 norm {np.linalg.norm(vector):.3f}"
    if labels and top > 0:
        probabilities = np.exp(vector - vector.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[:top]
        text += ", top: " + ", ".join(f"{labels[k]} ({k}) {probabilities[k]:.2f}" for k in best)
    return text


# --- models ------------------------------------------------------------------------------------


def run_models(args: argparse.Namespace, client: Client) -> None:
    show(args, (served_model(m) for m in client.list_models()))


def served_model(model: embedding_pb2.ModelInfo) -> Shown:
    data = {
        "name": model.name,
        "versions": [
            {
                "version": v.version,
                "architecture": v.architecture,
                "provider": v.execution_provider,
                "input": _input(v),
                "random_init": v.random_init,
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
            for v in model.versions
        ],
    }
    lines = [
        f"{model.name} v{v.version}  {v.architecture}  {_input(v)}  {v.execution_provider}  "
        + ("random init (weights never trained)  " if v.random_init else "")
        + f"outputs: {', '.join(f'{o.name} ({o.dim})' for o in v.outputs)}"
        for v in model.versions
    ]
    return Shown(data, "\n".join(lines))


def _input(version: embedding_pb2.ModelVersion) -> str:
    """ "224x224", or the rule of a model that keeps images whole ("whole image, shorter side 224")."""
    return version.input or f"{version.input_height}x{version.input_width}"  # a server from before the field


# --- collections -------------------------------------------------------------------------------


def add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")


def add_collection_create(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    parser.add_argument("--model", help=f"model name (default: {DEFAULT_MODEL})")
    parser.add_argument("--version", type=int, default=0, help="model version (default: latest, fixed at creation)")
    parser.add_argument("--output", help="model output to index (default: embedding)")
    parser.add_argument(
        "--dim",
        type=positive_int,
        default=0,
        metavar="D",
        help="instead of a model: a collection of your own vectors of D values, added and searched by vector or id",
    )
    parser.add_argument(
        "--metric",
        choices=["ip", "l2"],
        default="ip",
        help="ip: inner product on L2-normalised vectors (default); l2: Euclidean",
    )
    parser.add_argument(
        "--index-type",
        choices=["flat", "hnsw", "ivfpq"],
        default="flat",
        help="flat: exact (default); hnsw: graph; ivfpq: compressed, trained once big enough",
    )
    parser.add_argument(
        "--thumbnail-size",
        type=positive_int,
        default=0,
        metavar="PIXELS",
        help="keep a JPEG of each image item, at most PIXELS (16-256) on its longer side, for the search page",
    )
    for index_type, fields in INDEX_PARAMETERS.items():
        group = parser.add_argument_group(f"{index_type} parameters (default: the server's, docs/api.md)")
        for flag, (_, help_text) in fields.items():
            group.add_argument(f"--{flag}", type=positive_int, metavar="N", help=help_text)


# CLI flag -> (field of HnswParams or IvfPqParams, help), per index type
INDEX_PARAMETERS = {
    "hnsw": {
        "hnsw-m": ("m", "neighbours per node (32)"),
        "ef-construction": ("ef_construction", "candidates while building (200)"),
        "ef-search": ("ef_search", "candidates while searching (128)"),
    },
    "ivfpq": {
        "nlist": ("nlist", "inverted lists (256)"),
        "pq-m": ("m", "sub-quantizers, dividing the dimension (dim / 8, at most 64)"),
        "nbits": ("nbits", "bits per sub-quantizer code (8)"),
        "nprobe": ("nprobe", "lists visited per search (16)"),
        "train-size": ("train_size", "vectors before the index is trained (40 x nlist)"),
        "refine-factor": ("refine_factor", "candidates re-ranked exactly, x k (10)"),
    },
}


def index_parameters(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    """The --index-type's parameters given as flags, {"hnsw": {...}, "ivfpq": {...}}; a flag of another index
    type is a usage error rather than silently ignored."""
    given: dict[str, dict[str, int]] = {}
    for index_type, fields in INDEX_PARAMETERS.items():
        for flag, (field, _) in fields.items():
            value = getattr(args, flag.replace("-", "_"))
            if value is None:
                continue
            if index_type != args.index_type:
                raise UsageError(f"--{flag} is a parameter of --index-type {index_type}, not {args.index_type}")
            given.setdefault(index_type, {})[field] = value
    return given


def run_collection_create(args: argparse.Namespace, client: Client) -> None:
    parameters = index_parameters(args)
    info = client.create_collection(
        args.name,
        model=args.model,
        version=args.version,
        output=args.output,
        metric=args.metric,
        index_type=args.index_type,
        hnsw=parameters.get("hnsw"),
        ivfpq=parameters.get("ivfpq"),
        dim=args.dim,
        thumbnail_size=args.thumbnail_size,
    )
    show(args, Shown(message_dict(info), f"created {info.name}: {bound_to(info.binding)}, {info.index_type}"))


def bound_to(binding: index_pb2.Binding) -> str:
    if not binding.model:
        return f"your own vectors ({binding.dim}-d)"
    return f"{binding.model} v{binding.version} {binding.output} ({binding.dim}-d)"


def run_collection_list(args: argparse.Namespace, client: Client) -> None:
    show(args, (collection_line(c) for c in client.list_collections()))


def collection_line(c: index_pb2.Collection) -> Shown:
    text = f"{c.name}  {c.count} items  {c.index_type}  {bound_to(c.binding)}  {c.bytes_on_disk / 1e6:.1f} MB"
    return Shown(message_dict(c), text)


def run_collection_show(args: argparse.Namespace, client: Client) -> None:
    data = message_dict(client.get_collection(args.name))
    show(args, Shown(data, json.dumps(data, indent=2)))


def add_collection_whiten(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    parser.add_argument("--dim", type=int, default=0, help="output dimension (default: keep the full dimension)")
    parser.add_argument(
        "--learn-from",
        default="",
        metavar="COLLECTION",
        help="learn it from this collection's vectors (the same model output; an independent set of photos)",
    )


def add_collection_augment(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    parser.add_argument("--neighbours", type=int, default=1, help="nearest items blended in (default: 1)")
    parser.add_argument("--alpha", type=float, default=0.0, help="their weight is similarity^alpha (default: 3)")


def run_collection_augment(args: argparse.Namespace, client: Client) -> None:
    info = client.augment_database(args.name, neighbours=args.neighbours, alpha=args.alpha)
    show(args, Shown(message_dict(info), f"augmented {info.name}: {info.count} items"))


def run_collection_whiten(args: argparse.Namespace, client: Client) -> None:
    info = client.train_whitening(args.name, dim=args.dim, learn_from=args.learn_from)
    show(args, Shown(message_dict(info), f"whitened {info.name}: {info.whitening_dim}-d, {info.count} items"))


def add_collection_copy(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    parser.add_argument("--to", required=True, metavar="SERVER", help="address of the server to copy to")
    parser.add_argument("--as", dest="as_name", default="", metavar="NAME", help="name there (default: the same)")
    parser.add_argument(
        "--to-tls", action="store_true", help="connect to SERVER with TLS (system roots unless --to-ca-cert)"
    )
    parser.add_argument("--to-ca-cert", type=pathlib.Path, metavar="PEM", help="CA certificate of SERVER's TLS")
    parser.add_argument(
        "--to-token",
        default=os.environ.get("OFFSHELF_TO_TOKEN"),
        help="bearer token for SERVER (default: $OFFSHELF_TO_TOKEN; --token is never sent there)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=500, metavar="N", help="items per request (default: %(default)s)"
    )


def run_collection_copy(args: argparse.Namespace, client: Client) -> None:
    target = Connection(args.to, tls=args.to_tls, ca_cert=args.to_ca_cert, token=args.to_token, retries=args.retries)
    with Client(target, timeout=args.timeout) as to:
        info = client.copy_collection(args.name, to, args.as_name, batch=args.batch_size, progress=not args.json)
    note = "; the source was whitened: whiten the copy too" if client.get_collection(args.name).whitening_dim else ""
    show(args, Shown(message_dict(info), f"copied {args.name} to {args.to} as {info.name}: {info.count} items{note}"))


def run_collection_delete(args: argparse.Namespace, client: Client) -> None:
    client.delete_collection(args.name)
    show(args, Shown({"deleted": args.name}, f"deleted {args.name}"))


# --- add, search, eval -------------------------------------------------------------------------


def add_add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--id-prefix", default="", metavar="TEXT", help="put TEXT before every id (e.g. 'holidays/')")
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="requests in flight at once (default: %(default)s)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out files that cannot be read or decoded (each named on stderr) and add the rest",
    )
    parser.add_argument("--label", metavar="LABEL", help="label of every image (default: its parent folder's name)")
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        type=meta_pair,
        metavar="KEY=VALUE",
        help="metadata entry of every image; repeat for several keys",
    )
    parser.add_argument(
        "--sidecar",
        type=pathlib.Path,
        metavar="FILE",
        help="labels and metadata per image from a .csv (columns id or file, label, then one per metadata key) or "
        ".json file; they take precedence over --label and --meta (docs/api.md)",
    )
    add_batch_size(parser)


def item_fields(
    args: argparse.Namespace,
) -> tuple[Callable[[pathlib.Path], str], Callable[[pathlib.Path], dict[str, str]], list[str]]:
    """add's label and metadata of each file (--sidecar over --label/--meta over the parent folder's name), and
    the sidecar rows that name no image."""
    meta = dict(args.meta)
    if len(meta) < len(args.meta):
        raise UsageError("--meta names a key twice; give each key once")
    rows: dict[str, sidecar.Fields] = {}
    unmatched: list[str] = []
    if args.sidecar:
        try:
            rows, unmatched = sidecar.match(sidecar.read_sidecar(args.sidecar), list(image_paths(args.paths)))
        except sidecar.SidecarError as err:
            raise UsageError(str(err)) from err

    def fields(path: pathlib.Path) -> sidecar.Fields:
        return rows.get(os.path.abspath(path)) or sidecar.Fields()

    def label(path: pathlib.Path) -> str:
        return fields(path).label or args.label or path.absolute().parent.name

    return label, lambda path: {**meta, **fields(path).metadata}, unmatched


def run_add(args: argparse.Namespace, client: Client) -> None:
    if next(image_paths(args.paths), None) is None:
        raise UsageError(f"no images found in {' '.join(args.paths)} (looked for .jpg, .jpeg, .png, .webp, .gif)")
    labels, metadata, unmatched = item_fields(args)
    if unmatched and not args.json:
        print(f"offshelf add: {len(unmatched)} sidecar rows name no image, e.g. {unmatched[0]!r}", file=sys.stderr)
    skipped: list[dict[str, str]] = []

    def on_skip(name: str, message: str) -> None:
        skipped.append({"file": name, "message": message})
        line = json.dumps({"skipped": name, "message": message}) if args.json else f"offshelf add: skipped {message}"
        tqdm.write(line, file=sys.stderr)

    added = client.add_images(
        args.collection,
        args.paths,
        labels=labels,
        metadata=metadata,
        batch_size=args.batch_size,
        progress=not args.json,
        id_prefix=args.id_prefix,
        concurrency=args.concurrency,
        skip_bad=args.skip_bad,
        on_skip=on_skip,
    )
    count = client.get_collection(args.collection).count
    data = {"collection": args.collection, "added": len(added), "skipped": skipped, "count": count}
    if args.sidecar:
        data["sidecar_unmatched"] = unmatched
    text = f"added {len(added)} images" + (f" ({len(skipped)} skipped)" if skipped else "")
    show(args, Shown(data, f"{text}; {args.collection} holds {count}"))


def stored_item(item: StoredItem) -> Shown:
    data: dict[str, Any] = {"id": item.id, "label": item.label, "metadata": item.metadata}
    text = item.id + (f"  [{item.label}]" if item.label else "")
    text += "".join(f"  {key}={value}" for key, value in sorted(item.metadata.items()))
    if item.vector is not None:
        data["vector"] = item.vector.tolist()
        text += f"  dim {len(item.vector)}, L2 norm {np.linalg.norm(item.vector):.3f}"
    return Shown(data, text)


def add_get(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="+", metavar="ID")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--vectors", action="store_true", help="print each item's vector too (as indexed)")


def run_get(args: argparse.Namespace, client: Client) -> None:
    items = client.get_items(args.collection, args.ids, with_vectors=args.vectors)
    show(args, (stored_item(item) for item in items))
    missing = sorted(set(args.ids) - {item.id for item in items}, key=args.ids.index)
    if missing:
        raise NotFound(f"collection {args.collection!r} has no item {', '.join(map(repr, missing))}")


def add_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", required=True)
    add_filters(parser, "items")
    parser.add_argument(
        "--page-size",
        type=positive_int,
        default=100,
        metavar="N",
        help="items per request, at most 1000 (default: %(default)s)",
    )
    parser.add_argument("--vectors", action="store_true", help="print each item's vector too (as indexed)")
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="at most N items; if more follow, the --page-token that continues the listing is printed on stderr",
    )
    parser.add_argument("--page-token", default="", metavar="TOKEN", help="continue a listing where a --limit stopped")


def run_list(args: argparse.Namespace, client: Client) -> None:
    show(args, listed(args, client))


def listed(args: argparse.Namespace, client: Client) -> Iterator[Shown]:
    """The items from --page-token on, --limit at most, a page at a time; then the token that continues, if any."""
    token, left = args.page_token, args.limit
    while True:
        size = args.page_size if left is None else min(args.page_size, left)
        items, token = client.list_items_page(
            args.collection, token, size, args.label, metadata_filter(args.meta), args.vectors
        )
        yield from (stored_item(item) for item in items)
        left = None if left is None else left - len(items)
        if not token or left == 0:
            break
    if token:
        note = json.dumps({"next_page_token": token}) if args.json else f"more items: --page-token {token}"
        print(note, file=sys.stderr)


def add_remove(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID")
    parser.add_argument("--collection", required=True)
    add_filters(parser, "remove the items")
    parser.add_argument("--dry-run", action="store_true", help="remove nothing: print how many items would be removed")


def run_remove(args: argparse.Namespace, client: Client) -> None:
    by_filter = bool(args.label or args.meta)
    if bool(args.ids) == by_filter:
        raise UsageError("name the items to remove by ID or by --label/--meta, one of the two")
    if args.dry_run:
        would = would_remove(args, client)
        data = {"collection": args.collection, "would_remove": would, "dry_run": True}
        show(args, Shown(data, f"would remove {would} items from {args.collection} (dry run: nothing removed)"))
        return
    response = client.remove(args.collection, args.ids, labels=args.label, metadata=metadata_filter(args.meta))
    data = {
        "collection": args.collection,
        "removed": response.removed,
        "not_found": list(response.not_found),
        "count": response.count,
    }
    text = f"removed {response.removed} items" + (
        f" (not found: {', '.join(response.not_found)})" if response.not_found else ""
    )
    show(args, Shown(data, f"{text}; {args.collection} holds {response.count}"))


def would_remove(args: argparse.Namespace, client: Client) -> int:
    """How many items remove would remove: those the filter selects, or the ids that are there."""
    if args.ids:
        ids = list(dict.fromkeys(args.ids))
        return sum(len(client.get_items(args.collection, list(part))) for part in batched(ids, 500))
    items = client.iter_items(args.collection, labels=args.label, metadata=metadata_filter(args.meta), page_size=1000)
    return sum(1 for _ in items)


def add_search(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", type=pathlib.Path, metavar="IMAGE", help="query by this image")
    parser.add_argument("--id", metavar="ID", help="query by the vector of this indexed item")
    parser.add_argument(
        "--vector", type=pathlib.Path, metavar="FILE", help="query by a vector saved with numpy (.npy, one vector)"
    )
    parser.add_argument("--collection", required=True)
    parser.add_argument("-k", type=int, default=5, help="results (default: %(default)s)")
    parser.add_argument("--flip", action="store_true", help="average an image query with its mirror image")
    add_filters(parser, "items")
    parser.add_argument(
        "--min-score", type=float, metavar="SCORE", help="only hits scoring at least SCORE (inner product collections)"
    )
    add_query_expansion(parser)


def add_query_expansion(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--qe",
        type=int,
        default=0,
        metavar="N",
        help="alpha query expansion: search again with the query plus its top N hits weighted by score^alpha "
        "(docs/retrieval.md; inner product collections)",
    )
    parser.add_argument("--qe-alpha", type=float, default=0.0, metavar="ALPHA", help="alpha of --qe (default: 3)")


def run_search(args: argparse.Namespace, client: Client) -> None:
    queries = {"an IMAGE": args.image, "--id": args.id, "--vector": args.vector}
    if sum(value is not None for value in queries.values()) != 1:
        raise UsageError(f"query by one of {', '.join(queries)}")
    hits = client.search(
        args.collection,
        image=args.image,
        id=args.id,
        vector=query_vector(args.vector) if args.vector else None,
        k=args.k,
        flip=args.flip,
        labels=args.label,
        metadata=metadata_filter(args.meta),
        min_score=args.min_score,
        query_expansion=args.qe,
        qe_alpha=args.qe_alpha,
    )
    query = str(args.image) if args.image else f"id {args.id}" if args.id else f"vector {args.vector}"
    lines = [query] + [hit_line(rank, hit) for rank, hit in enumerate(hits, 1)]
    data = [{"id": h.id, "score": h.score, "label": h.label, "metadata": h.metadata} for h in hits]
    show(args, Shown(data, "\n".join(lines)))


def hit_line(rank: int, hit: Hit) -> str:
    return f"  {rank:2d}. {hit.score:7.4f}  {hit.id}" + (f"  [{hit.label}]" if hit.label else "")


def query_vector(path: pathlib.Path) -> np.ndarray:
    """The one vector of a .npy file: shape (dim,) or (1, dim)."""
    try:
        array = np.load(path)
    except (OSError, ValueError) as err:
        raise UsageError(f"--vector {path}: not a numpy .npy file ({err})") from err
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.number):
        raise UsageError(f"--vector {path} holds an array of shape {array.shape}; save one vector, shape (dim,)")
    return array


def add_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["ukbench", "holidays"])
    parser.add_argument("folder", type=pathlib.Path, metavar="DIR")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    parser.add_argument("--output", default="embedding", help="model output (default: %(default)s)")
    parser.add_argument("--index-type", choices=["flat", "hnsw", "ivfpq"], default="flat")
    parser.add_argument("--flip", action="store_true", help="query with images and their mirror images")
    parser.add_argument(
        "--qe", type=int, default=0, metavar="N", help="alpha query expansion over the top N hits (default: none)"
    )
    parser.add_argument(
        "--dba", type=int, default=0, metavar="N", help="database-side augmentation with N neighbours (default: none)"
    )
    parser.add_argument(
        "--plot",
        type=pathlib.Path,
        metavar="FILE",
        help="write a PNG: N-S histogram (ukbench) or precision-recall (holidays)",
    )


def run_eval(args: argparse.Namespace, client: Client) -> None:
    dataset = evaluate.ukbench(args.folder) if args.dataset == "ukbench" else evaluate.holidays(args.folder)
    with evaluate.temporary_collection(client, dataset, args.model, args.output, args.index_type) as name:
        if args.dba:
            client.augment_database(name, neighbours=args.dba)
        if args.dataset == "ukbench":
            result = evaluate.ns_score(client, name, dataset, flip=args.flip, qe=args.qe)
        else:
            result = evaluate.mean_average_precision(client, name, dataset, flip=args.flip, qe=args.qe)
    if args.plot:
        evaluate.plot(result, args.plot)
    data = {
        "metric": result.name,
        "score": result.score,
        "queries": len(result.per_query),
        "images": len(dataset.paths),
    }
    text = (
        f"{result.name}: {result.score:.3f} ({len(result.per_query)} queries, {len(dataset.paths)} images, "
        f"{args.model} {args.output}{', flip' if args.flip else ''}{f', qe {args.qe}' if args.qe else ''}"
        f"{f', dba {args.dba}' if args.dba else ''})" + (f"\nplot: {args.plot}" if args.plot else "")
    )
    show(args, Shown(data, text))


# --- heads and classify ------------------------------------------------------------------------


def add_head_train(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=pathlib.Path, metavar="DIR", help="class folders of images")
    source.add_argument("--collection", help="a collection with labelled items")
    parser.add_argument("--kind", choices=["logreg", "linear-svm", "ncm"], default="logreg")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    parser.add_argument("--output", default="embedding", help="model output (default: %(default)s)")
    parser.add_argument("--add-classes", action="store_true", help="ncm: keep the served classes, add these")


def run_head_train(args: argparse.Namespace, client: Client) -> None:
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
    text = (
        f"{card.name} v{card.version} ({card.kind}): {len(card.labels)} classes, {card.metrics.examples} "
        f"examples, cross-validated accuracy {card.metrics.cv_accuracy:.3f} ({card.metrics.folds} folds)"
    )
    show(args, Shown(message_dict(head), text))


def run_head_list(args: argparse.Namespace, client: Client) -> None:
    show(args, (head_line(h) for h in client.list_heads()))


def head_line(head: heads_pb2.Head) -> Shown:
    state = heads_pb2.JobState.Name(head.job.state).removeprefix("JOB_STATE_").lower()
    text = (
        f"{head.job.head}  v{head.card.version or '-'}  {head.card.kind or '-'}  {len(head.card.labels)} classes  "
        f"{state}"
    )
    return Shown(message_dict(head), text)


def run_head_show(args: argparse.Namespace, client: Client) -> None:
    data = message_dict(client.get_head(args.name))
    show(args, Shown(data, json.dumps(data, indent=2)))


def run_head_delete(args: argparse.Namespace, client: Client) -> None:
    client.delete_head(args.name)
    show(args, Shown({"deleted": args.name}, f"deleted {args.name}"))


def add_classify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=pathlib.Path, metavar="IMAGE")
    parser.add_argument("--head", required=True)
    parser.add_argument("-k", type=int, default=3, help="labels per image (default: %(default)s)")
    parser.add_argument("--augmentation", choices=["none", "flip", "10crop"], default="none")
    add_batch_size(parser)


def run_classify(args: argparse.Namespace, client: Client) -> None:
    require_files(args.images)
    show(args, classified(args, client))


def classified(args: argparse.Namespace, client: Client) -> Iterator[Shown]:
    """Each image's top labels, a request of --batch-size images at a time: files are read per batch."""
    for paths in batched(args.images, args.batch_size):
        results = client.classify(paths, args.head, k=args.k, augmentation=args.augmentation)
        for path, top in zip(paths, results, strict=True):
            data = {"image": str(path), "top": [{"label": label, "probability": p} for label, p in top]}
            yield Shown(data, f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in top))


# --- health ------------------------------------------------------------------------------------


def add_health(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="keep asking until SERVING or SECONDS have passed"
    )


def run_health(args: argparse.Namespace, client: Client) -> None:
    status = health_status(client, args.wait)
    show(args, Shown({"status": status}, status))
    if status != "SERVING":
        raise NotServing(status)


def health_status(client: Client, wait: float) -> str:
    """The server's status, asked until SERVING or `wait` seconds have passed; a server that cannot answer
    counts as its error's status meanwhile, and is raised once the time is up."""
    deadline = time.monotonic() + wait
    while True:
        try:
            status = client.health()
        except OffshelfError as err:
            if time.monotonic() >= deadline:
                raise
            status = err.status.name
        if status == "SERVING" or time.monotonic() >= deadline:
            return status
        time.sleep(0.5)


# --- the command table and the parser ----------------------------------------------------------


class Command(NamedTuple):
    name: str  # "embed", or "collection create" for an action of a group
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Client], None]
    description: str | None = None


GROUPS = {
    "collection": "create, list, show, delete, copy, whiten or augment collections",
    "head": "train, list, show or delete classification heads",
}

COMMANDS = [
    Command(
        "embed",
        "embed images with a served model",
        add_embed,
        run_embed,
        "Embed images and print each output's size (and top labels for outputs that score classes), or write "
        "the vectors as JSON or .npy. Any number of images: they are sent --batch-size at a time.",
    ),
    Command("models", "list served models and outputs", no_arguments, run_models),
    Command(
        "collection create", "create a collection bound to a model output", add_collection_create, run_collection_create
    ),
    Command("collection list", "list collections", no_arguments, run_collection_list),
    Command("collection show", "show a collection", add_name, run_collection_show),
    Command("collection delete", "delete a collection", add_name, run_collection_delete),
    Command(
        "collection copy",
        "copy a collection to another server",
        add_collection_copy,
        run_collection_copy,
        "Copy a collection, with its items' ids, labels, metadata and vectors, from --server to the server --to, "
        "e.g. from a server on the embedded store (offshelf serve --data-dir DIR) to one on Milvus "
        "(OFFSHELF_MILVUS_URI). Ids are kept, so running it again after an interruption completes the copy (only "
        "the items the copy lacks are sent; the counts are compared at the end). The target has its own "
        "--to-token, --to-tls and --to-ca-cert: the source's --token is never sent to it.",
    ),
    Command(
        "collection whiten",
        "learn a PCA-whitening from a collection's vectors",
        add_collection_whiten,
        run_collection_whiten,
        "Learn a PCA-whitening from the collection's own vectors (or another collection's: --learn-from) and "
        "rebuild its index with it; later adds and queries are whitened alike; running it again re-learns it.",
    ),
    Command(
        "collection augment",
        "database-side augmentation: blend each item's vector with its nearest items'",
        add_collection_augment,
        run_collection_augment,
        "Replace every item's vector by itself plus its --neighbours nearest items' vectors weighted by "
        "similarity^alpha (embedded inner-product collections; items added later are augmented when it runs again).",
    ),
    Command(
        "add",
        "index image files, folders or globs into a collection",
        add_add,
        run_add,
        "Index images: files, folders (searched recursively for .jpg, .jpeg, .png, .webp, .gif) or quoted glob "
        "patterns such as 'photos/**/*.jpg'. Ids are paths relative to the folder named (for a glob, to its "
        "leading folder without wildcards; a file named directly: its file name), after --id-prefix; labels "
        "the parent folder names. An id already in the collection is replaced, so adding again changes "
        "nothing. Files are read a batch at a time, --concurrency requests in flight.",
    ),
    Command(
        "get",
        "show items by id",
        add_get,
        run_get,
        f"Show items by id (label, metadata, with --vectors the vector). Exit {EXIT_REFUSED} when an id is not "
        "there (the others are printed).",
    ),
    Command(
        "list",
        "list a collection's items",
        add_list,
        run_list,
        "List the items in id order, optionally filtered, fetched --page-size at a time.",
    ),
    Command(
        "remove",
        "remove items by id or by label and metadata",
        add_remove,
        run_remove,
        "Remove the items named by ID, or every item the --label/--meta filter selects.",
    ),
    Command(
        "search",
        "find the nearest indexed items to an image, an item or a vector",
        add_search,
        run_search,
        "Find the k nearest items to an IMAGE, to an indexed item (--id) or to a vector (--vector FILE.npy), "
        "optionally among the items the --label/--meta filter selects and scoring at least --min-score.",
    ),
    Command(
        "eval",
        "retrieval score on UKBench or INRIA Holidays",
        add_eval,
        run_eval,
        "Index the dataset into a temporary collection through the server, query it and print the score: "
        "UKBench N-S (out of 4) or Holidays mAP.",
    ),
    Command(
        "head train",
        "train a head in the server's background",
        add_head_train,
        run_head_train,
        "Train a head on labelled images (class folders: DIR/<label>/*.jpg) or on a collection's labelled "
        "items, and wait for it.",
    ),
    Command("head list", "list heads", no_arguments, run_head_list),
    Command("head show", "show a head", add_name, run_head_show),
    Command("head delete", "delete a head", add_name, run_head_delete),
    Command(
        "classify",
        "top labels of images from a head",
        add_classify,
        run_classify,
        "Classify images with a head. Any number of images: they are sent --batch-size at a time.",
    ),
    Command(
        "health",
        "print the server's health status",
        add_health,
        run_health,
        f"Exit {EXIT_OK} when SERVING, {EXIT_NOT_SERVING} when the server answers otherwise, {EXIT_NO_ANSWER} when "
        "it does not answer.",
    ),
]


def connection_options() -> argparse.ArgumentParser:
    """The options every client command takes."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--server",
        default=os.environ.get("OFFSHELF_SERVER", "localhost:50051"),
        help="server address host:port (default: $OFFSHELF_SERVER or %(default)s)",
    )
    options.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds")
    options.add_argument("--json", action="store_true", help="print the result as JSON (errors too, on stderr)")
    options.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca-cert)")
    options.add_argument("--ca-cert", type=pathlib.Path, metavar="PEM", help="CA certificate for TLS")
    options.add_argument(
        "--token",
        default=os.environ.get("OFFSHELF_TOKEN"),
        help="bearer token sent with every call (default: $OFFSHELF_TOKEN)",
    )
    options.add_argument(
        "--retries", type=int, default=4, help="retries after UNAVAILABLE, with backoff (default: %(default)s)"
    )
    options.add_argument(
        "--request-id",
        metavar="ID",
        help="sent as x-request-id with every call, for finding them in the server's log (default: one per call, "
        "made up by the server); an error names its call's",
    )
    return options


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="offshelf",
        description="Off-the-shelf CNN features, served.",
        epilog="exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('offshelf')}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    groups: dict[str, argparse._SubParsersAction] = {}
    connection = connection_options()
    for command in COMMANDS:
        group, _, action = command.name.partition(" ")
        subparsers = commands
        if action:
            if group not in groups:
                group_parser = commands.add_parser(group, help=GROUPS[group])
                groups[group] = group_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
            subparsers = groups[group]
        sub = subparsers.add_parser(
            action or group, parents=[connection], help=command.help, description=command.description
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run, command_name=command.name)
    return root


# --- running -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args = parser().parse_args(argv)
    try:
        connection = Connection(args.server, tls=args.tls, ca_cert=args.ca_cert, token=args.token, retries=args.retries)
        with Client(connection, timeout=args.timeout, request_id=args.request_id) as client:
            args.run(args, client)
        sys.stdout.flush()  # so that a closed stdout shows here, not as a traceback at exit
    except BrokenPipeError:
        return stdout_closed()
    except NotServing:
        return EXIT_NOT_SERVING
    except OffshelfError as err:
        no_answer = isinstance(err, Unavailable | DeadlineExceeded)
        return report(args, err.status.name, err.message, EXIT_NO_ANSWER if no_answer else EXIT_REFUSED, err.request_id)
    except (UsageError, OSError, ValueError, RuntimeError) as err:
        return report(args, "USAGE", f"error: {err}", EXIT_USAGE)
    return EXIT_OK


def stdout_closed() -> int:
    """The reader of stdout went away (``offshelf models | head -1``): end quietly, as a tool killed by SIGPIPE."""
    # Python flushes stdout once more at exit; pointing it at /dev/null keeps that from failing again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_STDOUT_CLOSED


def report(args: argparse.Namespace, code: str, message: str, exit_code: int, request_id: str = "") -> int:
    """Prints an error on stderr (as JSON with --json), with the request id of the call that failed when there is
    one, and returns the exit code."""
    if args.json:
        error = {"error": code, "message": message, **({"request_id": request_id} if request_id else {})}
        print(json.dumps(error), file=sys.stderr)
    else:
        text = message if code == "USAGE" else f"{code}: {message}"
        print(
            f"offshelf {args.command_name}: {text}{f' (request id {request_id})' if request_id else ''}",
            file=sys.stderr,
        )
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
