"""Fine-tuning a CNN from the export registry on an image folder, or training it from scratch.

Frozen layers up to a named one (or the first N blocks), separate learning rates for the head
and the backbone (optionally decaying per block), augmentation, early stopping on validation
loss with the best weights kept, progress bars, a PNG of the curves, and a checkpoint that
``offshelf export --weights`` reads.
"""

from __future__ import annotations

import copy
import pathlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from offshelf.export.checkpoint import write_checkpoint
from offshelf.export.zoo import build_network, last_linear
from offshelf.train.data import load_splits
from offshelf.train.device import choose, gradient_scaler, mixed_precision
from offshelf.train.errors import TrainError


@dataclass
class FinetuneConfig:
    data: pathlib.Path
    out: pathlib.Path
    architecture: str = "efficientnet-lite0"
    weights: str | None = None  # as for export; "random" trains from scratch
    freeze: str = ""  # a layer name (frozen with all before it) or a number of blocks; "" freezes nothing
    lr_head: float = 1e-3
    lr_backbone: float = 1e-4
    lr_decay: float = 1.0  # each block below the top gets lr_backbone x lr_decay^depth
    augment: bool = True
    epochs: int = 20
    patience: int = 3
    batch_size: int = 32
    val_split: float = 0.2
    limit_per_class: int = 0
    seed: int = 0
    init_head: bool = True  # start the classifier from a linear probe (pretrained weights only)
    device: str = "auto"  # auto (CUDA when it works), cpu or cuda


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0  # 0: the initial linear probe stayed best
    best_accuracy: float = 0.0


def blocks(module: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Parameters grouped by block: top-level children, with numbered containers (features.3) split."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, parameter in module.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        groups.setdefault(key, []).append(parameter)
    return list(groups.items())


def freeze(module: nn.Module, spec: str) -> list[str]:
    """Freezes blocks up to and including `spec` (a name or a count); returns the frozen block names."""
    groups = blocks(module)
    names = [name for name, _ in groups]
    if not spec:
        return []
    if spec.isdigit():
        count = int(spec)
    else:
        matches = [i for i, name in enumerate(names) if name == spec or name.startswith(spec + ".")]
        if not matches:
            raise TrainError(f"--freeze {spec!r} is not a block; blocks: {', '.join(names)}")
        count = matches[-1] + 1
    for _, parameters in groups[:count]:
        for parameter in parameters:
            parameter.requires_grad = False
    return names[:count]


def parameter_groups(module: nn.Module, classifier: str, config: FinetuneConfig) -> list[dict]:
    head = {id(p) for p in module.get_submodule(classifier).parameters()}
    backbone = [(name, [p for p in ps if p.requires_grad and id(p) not in head]) for name, ps in blocks(module)]
    backbone = [(name, ps) for name, ps in backbone if ps]
    groups = [{"params": list(module.get_submodule(classifier).parameters()), "lr": config.lr_head}]
    for depth, (_, ps) in enumerate(reversed(backbone)):
        groups.append({"params": ps, "lr": config.lr_backbone * config.lr_decay**depth})
    return groups


def init_head(model: nn.Module, classifier: str, loader: DataLoader, device: torch.device) -> None:
    """Starts the new classifier from a logistic regression on the pretrained features (a linear probe), so
    fine-tuning refines a good model instead of first undoing a random head through the backbone."""
    from sklearn.linear_model import LogisticRegression

    head = model.get_submodule(classifier)
    parent, _, leaf = classifier.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, leaf, nn.Identity())
    model.eval()
    features, targets = [], []
    with torch.no_grad():
        for images, labels in tqdm(loader, desc="features for the initial classifier", unit="batch", leave=False):
            features.append(model(images.to(device)).float().cpu())
            targets.append(labels)
    setattr(owner, leaf, head)
    x, y = torch.cat(features).numpy(), torch.cat(targets).numpy()
    probe = LogisticRegression(C=1.0, max_iter=3000).fit(x, y)
    weight, bias = probe.coef_, probe.intercept_
    if len(probe.classes_) == 2:  # one row for class 1: split it into two softmax rows
        weight, bias = [-weight[0] / 2, weight[0] / 2], [-bias[0] / 2, bias[0] / 2]
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(np.asarray(weight), dtype=torch.float32, device=device))
        head.bias.copy_(torch.as_tensor(np.asarray(bias), dtype=torch.float32, device=device))


def _epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer | None,
    description: str,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One pass over the loader: training when an optimizer (and its gradient scaler) is given. Loss, accuracy."""
    training = optimizer is not None
    model.train(training)
    for module in model.modules():  # frozen blocks keep their BatchNorm statistics too
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(training), tqdm(loader, desc=description, unit="batch", leave=False) as bar:
        for images, targets in bar:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with mixed_precision(device):
                logits = model(images)
                loss = nn.functional.cross_entropy(logits, targets)
            if training:
                assert optimizer is not None and scaler is not None
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            total_loss += loss.item() * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / seen, correct / seen


def finetune(config: FinetuneConfig, log=print) -> History:
    torch.manual_seed(config.seed)
    device = choose(config.device)
    network = build_network(config.architecture, config.weights)
    train, val, classes = load_splits(
        config.data, network.preprocessing, config.augment, config.val_split, config.limit_per_class, config.seed
    )
    model = network.module
    classifier = last_linear(model)
    old = model.get_submodule(classifier)
    parent, _, leaf = classifier.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, nn.Linear(old.in_features, len(classes)))
    frozen = freeze(model, config.freeze)
    model.to(device)
    if config.init_head and config.weights != "random":
        plain, _, _ = load_splits(
            config.data, network.preprocessing, False, config.val_split, config.limit_per_class, config.seed
        )
        init_head(model, classifier, DataLoader(plain, config.batch_size, num_workers=2), device)
        log("initialised the classifier by logistic regression on the frozen features")
    log(
        f"{config.architecture}: {len(classes)} classes {classes}, {len(train)} training and {len(val)} validation "
        f"images; frozen blocks: {', '.join(frozen) or 'none'}; on {device.type}"
        + (" in mixed precision" if device.type == "cuda" else "")
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, classifier, config), weight_decay=1e-4)
    scaler = gradient_scaler(device)
    on_gpu = device.type == "cuda"
    loaders = (  # read every epoch: workers that persist are not forked again each time
        DataLoader(train, config.batch_size, shuffle=True, num_workers=2, persistent_workers=True, pin_memory=on_gpu),
        DataLoader(val, config.batch_size, num_workers=2, persistent_workers=True, pin_memory=on_gpu),
    )
    history, best, best_loss, waited = History(), copy.deepcopy(model.state_dict()), float("inf"), 0
    start_accuracy = 0.0
    if config.init_head and config.weights != "random":  # the linear probe is the first candidate
        best_loss, start_accuracy = _epoch(model, loaders[1], None, "epoch 0 val", device)
        log(f"epoch 0 (linear probe): val loss {best_loss:.4f} acc {start_accuracy:.3f}")
    for epoch in range(1, config.epochs + 1):
        train_loss, train_accuracy = _epoch(model, loaders[0], optimizer, f"epoch {epoch} train", device, scaler)
        val_loss, val_accuracy = _epoch(model, loaders[1], None, f"epoch {epoch} val", device)
        for name, value in zip(
            ("train_loss", "train_accuracy", "val_loss", "val_accuracy"),
            (train_loss, train_accuracy, val_loss, val_accuracy),
            strict=True,
        ):
            getattr(history, name).append(value)
        log(
            f"epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.3f} | "
            f"val loss {val_loss:.4f} acc {val_accuracy:.3f}"
        )
        if val_loss < best_loss:
            best, best_loss, waited, history.best_epoch = copy.deepcopy(model.state_dict()), val_loss, 0, epoch
        else:
            waited += 1
            if waited >= config.patience:
                log(f"stopping early: validation loss has not improved for {config.patience} epochs")
                break
    config.out.mkdir(parents=True, exist_ok=True)
    best = {name: tensor.cpu() for name, tensor in best.items()}
    write_checkpoint(config.out / "checkpoint.pt", config.architecture, best, classes, network.preprocessing)
    plot(history, config.out / "curves.png")
    best_accuracy = history.val_accuracy[history.best_epoch - 1] if history.best_epoch else start_accuracy
    history.best_accuracy = best_accuracy
    log(
        f"best epoch {history.best_epoch}: val loss {best_loss:.4f}, acc {best_accuracy:.3f}; "
        f"wrote {config.out / 'checkpoint.pt'} and curves.png"
    )
    return history


def plot(history: History, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history.train_loss) + 1)
    figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    for axes, metric in ((loss, "loss"), (accuracy, "accuracy")):
        axes.plot(epochs, getattr(history, f"train_{metric}"), "o-", label="train")
        axes.plot(epochs, getattr(history, f"val_{metric}"), "o-", label="validation")
        axes.axvline(history.best_epoch, color="0.6", linestyle="--", label="best (kept)")
        axes.set(xlabel="epoch", ylabel=metric)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
