"""``offshelf train finetune DATA_DIR``: fine-tuning (or ``--from-scratch``) with early stopping."""

from __future__ import annotations

import argparse
import pathlib
import sys

from offshelf.export.errors import ExportError
from offshelf.train.device import DEVICES
from offshelf.train.errors import TrainError
from offshelf.train.finetune import FinetuneConfig, finetune


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="offshelf train finetune",
        description="Fine-tune a CNN of the export registry on DATA_DIR (train/ and val/ or validation/ class "
        "folders, or one class-folder tree split by --val-split), stopping when the validation loss stops "
        "improving and keeping the best weights. Writes OUT/checkpoint.pt (for `offshelf export --weights`) and "
        "OUT/curves.png.",
    )
    p.add_argument("data", type=pathlib.Path, metavar="DATA_DIR")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("finetuned"), help="output folder")
    p.add_argument("--arch", default="efficientnet-lite0", help="architecture (default: %(default)s)")
    p.add_argument("--weights", help="as for `offshelf export --weights` (default: the Lite packages' weights)")
    p.add_argument("--from-scratch", action="store_true", help="random initialisation, nothing frozen (baseline)")
    p.add_argument(
        "--freeze",
        default="",
        metavar="LAYER|N",
        help="freeze the blocks up to and including LAYER, or the first N blocks",
    )
    p.add_argument("--lr-head", type=float, default=1e-3, help="learning rate of the new classifier")
    p.add_argument("--lr-backbone", type=float, default=1e-4, help="learning rate of the unfrozen backbone")
    p.add_argument(
        "--lr-decay",
        type=float,
        default=1.0,
        help="per-block decay: block d below the top learns at lr-backbone x decay^d",
    )
    p.add_argument(
        "--no-augment", dest="augment", action="store_false", help="no random resized crop, flip or colour jitter"
    )
    p.add_argument(
        "--no-init-head",
        dest="init_head",
        action="store_false",
        help="start the new classifier at random instead of from a linear probe on the features",
    )
    p.add_argument("--epochs", type=int, default=20, help="most epochs (default: %(default)s)")
    p.add_argument("--patience", type=int, default=3, help="epochs without a better validation loss before stopping")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--val-split", type=float, default=0.2, help="held-out fraction without a val/ folder")
    p.add_argument("--limit-per-class", type=int, default=0, help="use only this many training images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA (mixed precision) when it works")
    return p


def dann_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="offshelf train dann",
        description="Domain-adversarial adaptation (DANN): train on labelled --source class folders while a "
        "domain discriminator behind a gradient reversal layer aligns features with the unlabelled --target "
        "images. With --target-labelled, scores the source-only baseline and the adapted model on it.",
    )
    p.add_argument("--source", type=pathlib.Path, required=True, help="labelled source images: <class>/*.jpg")
    p.add_argument(
        "--target",
        type=pathlib.Path,
        required=True,
        help="unlabelled target images in sub-folders (their names are ignored)",
    )
    p.add_argument("--target-labelled", type=pathlib.Path, help="labelled target images to score on")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("adapted"), help="output folder")
    p.add_argument("--arch", default="efficientnet-lite0")
    p.add_argument("--weights")
    p.add_argument("--freeze", default="", metavar="LAYER|N")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA (mixed precision) when it works")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dann"]:
        from offshelf.train.dann import DannConfig, run_dann

        args = dann_parser().parse_args(argv[1:])
        try:
            run_dann(
                DannConfig(
                    source=args.source,
                    target=args.target,
                    target_labelled=args.target_labelled,
                    out=args.out,
                    architecture=args.arch,
                    weights=args.weights,
                    freeze=args.freeze,
                    lr=args.lr,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    device=args.device,
                )
            )
        except (TrainError, ExportError) as err:  # the network is built by the export tool
            print(f"offshelf train: error: {err}", file=sys.stderr)
            return 2
        return 0
    if argv[:1] != ["finetune"]:
        print(
            "usage: offshelf train finetune DATA_DIR [options] | offshelf train dann --source DIR --target DIR "
            "(see --help of each)",
            file=sys.stderr,
        )
        return 2
    args = parser().parse_args(argv[1:])
    config = FinetuneConfig(
        data=args.data,
        out=args.out,
        architecture=args.arch,
        weights="random" if args.from_scratch else args.weights,
        freeze="" if args.from_scratch else args.freeze,
        lr_head=args.lr_head,
        lr_backbone=args.lr_backbone,
        lr_decay=args.lr_decay,
        augment=args.augment,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        val_split=args.val_split,
        limit_per_class=args.limit_per_class,
        seed=args.seed,
        init_head=args.init_head,
        device=args.device,
    )
    try:
        finetune(config)
    except (TrainError, ExportError) as err:  # the network is built by the export tool
        print(f"offshelf train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
