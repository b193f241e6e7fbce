"""``offshelf export``: convert a CNN to ONNX into a model repository."""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from offshelf.export.repository import PARITY_TOLERANCE, default_check_images, write_model
from offshelf.export.zoo import ARCHITECTURES, ExportError, build


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="offshelf export",
        description="Export a pretrained CNN to ONNX with its logits and pooled embedding as outputs, "
        "check it against torch on real photos, and write it as the next version of "
        "REPO/NAME/<version>/{model.onnx,card.json}.",
    )
    p.add_argument("architecture", choices=sorted(ARCHITECTURES), help="architecture to export")
    p.add_argument("--repo", type=pathlib.Path, required=True, help="model repository folder (created if missing)")
    p.add_argument("--name", help="model name in the repository (default: the architecture)")
    p.add_argument(
        "--check-images",
        type=pathlib.Path,
        metavar="DIR",
        help="folder of photos for the torch-vs-onnxruntime check (default: scikit-image's photos)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=PARITY_TOLERANCE,
        help="largest accepted |torch - onnxruntime| (default: %(default).0e)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    try:
        if args.check_images:
            check_images = sorted(
                p for p in args.check_images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}
            )
        else:
            check_images = default_check_images()
        log(f"building {args.architecture} and loading its weights")
        built = build(args.architecture)
        log(f"built ({built.weights.file_name}, sha256 {built.weights.sha256[:12]}...)")
        target = write_model(
            built,
            args.architecture,
            args.repo,
            args.name or args.architecture,
            check_images[:16],
            tolerance=args.tolerance,
            log=log,
        )
    except ExportError as err:
        print(f"offshelf export: error: {err}", file=sys.stderr)
        return 2
    log(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
