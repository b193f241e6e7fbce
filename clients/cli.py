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
from offshelf.clients.client import DEFAULT_MODEL, Client

DELEGATED = {
    "export": ("offshelf.export.cli", "export a CNN to ONNX into a model repository (needs offshelf[torch])"),
    "serve": ("offshelf.service.cli", "run the gRPC server over a model repository"),
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
    formats = embed.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print the vectors as JSON")
    formats.add_argument(
        "--npy", type=pathlib.Path, metavar="FILE", help="save one output's vectors as an (images, dim) .npy array"
    )

    models = commands.add_parser("models", parents=[server], help="list served models and outputs")
    models.add_argument("--json", action="store_true", help="print as JSON")

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
    if args.npy and len(args.output) != 1:
        print("offshelf embed: error: --npy saves one output; name it with --output", file=sys.stderr)
        return EXIT_USAGE
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"offshelf embed: error: no such file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
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
            print(status)
            return 0 if status == "SERVING" else EXIT_SERVER_ERROR
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args = parser().parse_args(argv)
    run = {"embed": run_embed, "models": run_models, "health": run_health}[args.command]
    try:
        with Client(args.server, timeout=args.timeout) as client:
            return run(args, client)
    except grpc.RpcError as err:
        print(f"offshelf {args.command}: {err.code().name}: {err.details()}", file=sys.stderr)
        unreachable = err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return EXIT_UNREACHABLE if unreachable else EXIT_SERVER_ERROR


if __name__ == "__main__":
    sys.exit(main())
