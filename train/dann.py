"""Unsupervised domain adaptation with DANN (Ganin & Lempitsky, 2015).

A domain discriminator learns to tell source from target features through a gradient reversal
layer, so the backbone learns features the label classifier can use on both domains. The same
pipeline without the domain loss is the source-only baseline; with labelled target images
both are scored on them.
"""

from __future__ import annotations

import copy
import math
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from tqdm import tqdm

from offshelf.export.checkpoint import write_checkpoint
from offshelf.export.repository import card_transform
from offshelf.export.zoo import build_network, last_linear
from offshelf.train.data import train_transform
from offshelf.train.device import choose, gradient_scaler, mixed_precision
from offshelf.train.errors import TrainError
from offshelf.train.finetune import _epoch, freeze


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -lambda backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


@dataclass
class DannConfig:
    source: pathlib.Path
    target: pathlib.Path
    out: pathlib.Path
    target_labelled: pathlib.Path | None = None
    architecture: str = "efficientnet-lite0"
    weights: str | None = None
    freeze: str = ""
    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"  # auto (CUDA when it works), cpu or cuda


@dataclass
class DannReport:
    source_only_accuracy: float | None
    adapted_accuracy: float | None


def _model(config: DannConfig, classes: int) -> tuple[nn.Module, str]:
    network = build_network(config.architecture, config.weights)
    model = network.module
    classifier = last_linear(model)
    parent, _, leaf = classifier.rpartition(".")
    setattr(
        model.get_submodule(parent) if parent else model,
        leaf,
        nn.Linear(model.get_submodule(classifier).in_features, classes),
    )
    freeze(model, config.freeze)
    return model, classifier


def _endless(loader: DataLoader) -> Iterator:
    """The loader's batches again and again, each pass freshly shuffled and augmented (itertools.cycle would
    replay the first pass's tensors, and keep them all in memory)."""
    while True:
        yield from loader


def _train(
    config: DannConfig, source: DataLoader, target: DataLoader, classes: int, adapt: bool, device: torch.device
) -> nn.Module:
    torch.manual_seed(config.seed)
    model, classifier = _model(config, classes)
    model.to(device)
    head = model.get_submodule(classifier)
    parent, _, leaf = classifier.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    width = head.in_features
    discriminator = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 1)).to(device)
    scaler = gradient_scaler(device)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(discriminator.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=1e-4)
    steps = config.epochs * len(source)
    for step_epoch in range(config.epochs):
        model.train()
        pairs = zip(source, _endless(target), strict=False)
        for step, ((xs, ys), (xt, _)) in enumerate(
            tqdm(
                pairs,
                total=len(source),
                leave=False,
                desc=f"{'DANN' if adapt else 'source-only'} epoch {step_epoch + 1}",
            )
        ):
            progress = (step_epoch * len(source) + step) / steps
            xs, ys, xt = xs.to(device), ys.to(device), xt.to(device)
            with mixed_precision(device):
                setattr(owner, leaf, nn.Identity())  # the network now returns the features the classifier reads
                features = model(torch.cat([xs, xt]) if adapt else xs)
                setattr(owner, leaf, head)
                loss = nn.functional.cross_entropy(head(features[: len(xs)]), ys)
                if adapt:
                    strength = 2.0 / (1.0 + math.exp(-10 * progress)) - 1.0  # ramps 0 -> 1
                    domains = torch.cat([torch.zeros(len(xs)), torch.ones(len(xt))]).to(device)
                    logits = discriminator(GradientReversal.apply(features, strength)).squeeze(1)
                    loss = loss + nn.functional.binary_cross_entropy_with_logits(logits, domains)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return model


def run_dann(config: DannConfig, log=print) -> DannReport:
    source_set = datasets.ImageFolder(config.source)
    classes = source_set.classes
    pre = build_network(config.architecture, config.weights).preprocessing
    source_set.transform = train_transform(pre, augment=True)
    target_set = (
        datasets.ImageFolder(config.target, train_transform(pre, augment=True), allow_empty=True)
        if any(p.is_dir() for p in config.target.iterdir())
        else None
    )
    if target_set is None or len(target_set) == 0:
        raise TrainError(f"{config.target} holds no images in sub-folders (any folder names; labels are ignored)")
    source = DataLoader(
        source_set, config.batch_size, shuffle=True, num_workers=2, drop_last=len(source_set) > config.batch_size
    )
    target = DataLoader(target_set, config.batch_size, shuffle=True, num_workers=2)
    evaluation = None
    if config.target_labelled:
        labelled = datasets.ImageFolder(config.target_labelled, card_transform(pre))
        if labelled.classes != classes:
            raise TrainError(f"{config.target_labelled} has classes {labelled.classes}; the source has {classes}")
        evaluation = DataLoader(labelled, config.batch_size, num_workers=2)
    device = choose(config.device)
    log(f"source {len(source_set)} images in {classes}; target {len(target_set)} unlabelled images; on {device.type}")
    accuracies = {}
    for adapt in (False, True):
        model = _train(config, source, target, len(classes), adapt, device)
        if evaluation is not None:
            accuracies[adapt] = _epoch(model, evaluation, None, "scoring on the labelled target", device)[1]
            log(f"{'DANN-adapted' if adapt else 'source-only'} accuracy on the target: {accuracies[adapt]:.3f}")
    config.out.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.cpu() for name, tensor in copy.deepcopy(model.state_dict()).items()}
    write_checkpoint(config.out / "checkpoint.pt", config.architecture, weights, classes, pre)
    log(f"wrote {config.out / 'checkpoint.pt'} (the adapted model)")
    return DannReport(accuracies.get(False), accuracies.get(True))
