"""Image folders for training: DIR/train/<class>/*.jpg with DIR/val (or validation)/<class>/, or one
DIR/<class>/ tree split by a seeded fraction."""

from __future__ import annotations

import pathlib

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from offshelf.export.repository import card_transform
from offshelf.protos.v1 import model_card_pb2 as card_pb2
from offshelf.train.errors import TrainError


def train_transform(pre: card_pb2.Preprocessing, augment: bool) -> transforms.Compose:
    normalise = [transforms.ToTensor(), transforms.Normalize(list(pre.mean), list(pre.std))]
    if not augment:
        return card_transform(pre)
    return transforms.Compose(
        [
            transforms.RandomResizedCrop((pre.crop_height, pre.crop_width), scale=(0.5, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.2, 0.2, 0.2),
            *normalise,
        ]
    )


def load_splits(
    folder: pathlib.Path,
    pre: card_pb2.Preprocessing,
    augment: bool,
    val_fraction: float,
    limit_per_class: int = 0,
    seed: int = 0,
) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names). limit_per_class > 0 keeps that many training images per class."""
    val_dir = next((folder / n for n in ("val", "validation") if (folder / n).is_dir()), None)
    if (folder / "train").is_dir() and val_dir is not None:
        train = datasets.ImageFolder(folder / "train", train_transform(pre, augment))
        val = datasets.ImageFolder(val_dir, card_transform(pre))
        if val.classes != train.classes:
            raise TrainError(f"{val_dir} has classes {val.classes}, {folder / 'train'} has {train.classes}")
    elif folder.is_dir():
        train = datasets.ImageFolder(folder, train_transform(pre, augment))
        val = datasets.ImageFolder(folder, card_transform(pre))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        cut = int(len(order) * val_fraction)
        if cut == 0:
            raise TrainError(f"{folder} has no train/ and val/ folders; give --val-split above 0")
        train, val = Subset(train, order[cut:]), Subset(val, order[:cut])
    else:
        raise TrainError(f"no such folder {folder}")
    classes = train.dataset.classes if isinstance(train, Subset) else train.classes
    if limit_per_class:
        targets = [train.dataset.targets[i] for i in train.indices] if isinstance(train, Subset) else train.targets
        keep, seen = [], dict.fromkeys(range(len(classes)), 0)
        for i, target in enumerate(targets):
            if seen[target] < limit_per_class:
                keep.append(i)
                seen[target] += 1
        train = Subset(train, keep)
    return train, val, list(classes)
