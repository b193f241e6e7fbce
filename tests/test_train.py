"""Fine-tuning, the from-scratch baseline and DANN on small image sets, and the checkpoint the export tool reads.

Only the linear-probe test needs pretrained features (EfficientNet-Lite0 at 224 pixels); the others train a
randomly initialised ResNet-18 whose checkpoint crops 32 pixels (common.random_checkpoint), which runs the same
pipeline at a fraction of the cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from offshelf.export import cli as export_cli
from offshelf.export.checkpoint import read_checkpoint
from offshelf.export.zoo import build_network, last_linear
from offshelf.train import cli
from offshelf.train.dann import DannConfig, GradientReversal, run_dann
from offshelf.train.data import load_splits
from offshelf.train.device import choose
from offshelf.train.errors import TrainError
from offshelf.train.finetune import FinetuneConfig, _epoch, blocks, finetune, freeze, parameter_groups

from common import SHARED_DATA, random_checkpoint, read_card, shared_photos, small_preprocessing


def hymenoptera(tmp_path, train_per_class: int, val_per_class: int):
    """A small copy (links) of the ants/bees set: train/ and val/ with the first photos of each class."""
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for cls in ("ants", "bees"):
            (tmp_path / "bugs" / split / cls).mkdir(parents=True)
            for photo in shared_photos(f"hymenoptera/{split}/{cls}", count):
                (tmp_path / "bugs" / split / cls / photo.name).symlink_to(photo)
    return tmp_path / "bugs"


def test_freezing_by_name_or_count_and_per_block_learning_rates():
    module = build_network("resnet18", "random").module
    assert freeze(module, "layer2") == ["conv1", "bn1", "layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert all(not p.requires_grad for p in module.layer2.parameters())
    assert all(p.requires_grad for p in module.layer3.parameters())
    config = FinetuneConfig(data=SHARED_DATA, out=SHARED_DATA, lr_head=1e-2, lr_backbone=1e-3, lr_decay=0.5)
    groups = parameter_groups(module, last_linear(module), config)
    # fc, then the unfrozen residual blocks from the top down: layer4.1, layer4.0, layer3.1, layer3.0
    assert [g["lr"] for g in groups] == [1e-2, 1e-3, 5e-4, 2.5e-4, 1.25e-4]
    other = build_network("mobilenet_v3_small", "random").module
    assert freeze(other, "3") == [name for name, _ in blocks(other)][:3]


def test_finetune_writes_a_checkpoint_and_curves_that_export_reads(tmp_path):
    data, out = hymenoptera(tmp_path, 8, 4), tmp_path / "run"
    weights = random_checkpoint(tmp_path / "init.pt", "resnet18", 32)
    args = ["--arch", "resnet18", "--weights", str(weights), "--freeze", "layer3", "--epochs", "2"]
    assert cli.main(["finetune", str(data), "--out", str(out), *args, "--batch-size", "16"]) == 0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    export = ["resnet18", "--weights", str(out / "checkpoint.pt"), "--repo", str(tmp_path / "repo"), "--name", "bugs"]
    assert export_cli.main(export) == 0
    card = read_card(tmp_path / "repo" / "bugs" / "1")
    assert list(card.outputs[0].labels) == ["ants", "bees"] and card.outputs[0].dim == 2
    assert card.preprocessing == small_preprocessing(32)  # carried from the first checkpoint through training


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    data = hymenoptera(tmp_path, 8, 8)
    config = FinetuneConfig(
        data=data,
        out=tmp_path / "run",
        architecture="resnet18",
        weights=str(random_checkpoint(tmp_path / "init.pt", "resnet18", 32)),
        lr_head=3.0,  # high enough to make the validation loss get worse
        epochs=6,
        patience=1,
        batch_size=16,
        init_head=False,
    )
    history = finetune(config, log=lambda _: None)
    assert len(history.val_loss) < 6
    assert 1 <= history.best_epoch and history.val_loss[history.best_epoch - 1] == min(history.val_loss)
    kept = build_network("resnet18", str(tmp_path / "run" / "checkpoint.pt"))
    _, val, _ = load_splits(data, kept.preprocessing, False, 0.2)
    loss, _ = _epoch(kept.module, DataLoader(val, 8), None, "val", torch.device("cpu"))
    assert loss == pytest.approx(min(history.val_loss), rel=1e-4)  # the checkpoint holds the best epoch's weights


def test_the_linear_probe_starts_fine_tuning_and_is_kept_when_nothing_beats_it(tmp_path):
    config = FinetuneConfig(
        data=hymenoptera(tmp_path, 12, 10),
        out=tmp_path / "run",
        freeze="_blocks.15",
        lr_head=3.0,  # only makes the probe worse
        epochs=1,
        batch_size=12,
    )
    history = finetune(config, log=lambda _: None)
    assert history.best_epoch == 0 and history.best_accuracy >= 0.85  # the probe on pretrained features


def test_from_scratch_trains_the_same_pipeline_from_random_weights(tmp_path, capsys):
    data = hymenoptera(tmp_path, 4, 2)
    args = ["--from-scratch", "--arch", "mobilenet_v3_small", "--epochs", "1", "--batch-size", "8"]
    assert cli.main(["finetune", str(data), "--out", str(tmp_path / "run"), *args]) == 0
    assert "frozen blocks: none" in capsys.readouterr().out
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (checkpoint.architecture, checkpoint.class_names) == ("mobilenet_v3_small", ["ants", "bees"])


def squares(folder, per_class: int, background: float, seed: int):
    """32-pixel images of two classes, a faint or a strong square on a background of the given level."""
    rng = np.random.default_rng(seed)
    for cls, contrast in (("faint", 0.2), ("strong", 0.5)):
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            image = np.full((32, 32, 3), background + rng.uniform(0, 0.1))
            top, left = rng.integers(0, 20, 2)
            image[top : top + 12, left : left + 12] += contrast
            Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / cls / f"{i}.png")
    return folder


def test_gradient_reversal_passes_features_forward_and_reverses_their_gradient():
    features = torch.randn(3, 4, requires_grad=True)
    reversed_ = GradientReversal.apply(features, 0.25)
    assert torch.equal(reversed_, features)
    (reversed_ * torch.arange(4.0)).sum().backward()
    assert torch.equal(features.grad, -0.25 * torch.arange(4.0).expand(3, 4))


def test_dann_trains_the_source_only_baseline_and_the_adapted_model_and_scores_both(tmp_path):
    """The pipeline, on a small task whose target domain is brighter. Whether adaptation beats the baseline is
    not asserted: on the tasks tried (inverted hymenoptera photos, brightness-shifted squares) the gain came and
    went with the seed, so no test here can hold it (docs/transfer.md says so)."""
    config = DannConfig(
        source=squares(tmp_path / "source", 16, 0.0, seed=1),
        target=squares(tmp_path / "target", 16, 0.4, seed=2),
        target_labelled=squares(tmp_path / "target-labelled", 8, 0.4, seed=3),
        out=tmp_path / "out",
        architecture="resnet18",
        weights=str(random_checkpoint(tmp_path / "init.pt", "resnet18", 32)),
        epochs=1,
        batch_size=16,
    )
    messages: list[str] = []
    report = run_dann(config, log=messages.append)
    for accuracy in (report.source_only_accuracy, report.adapted_accuracy):
        assert accuracy is not None and accuracy * 16 == round(accuracy * 16)  # scored on the 16 labelled images
    assert [m.split(" accuracy")[0] for m in messages if "accuracy on the target" in m] == [
        "source-only",
        "DANN-adapted",
    ]
    checkpoint = read_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert (checkpoint.architecture, checkpoint.class_names) == ("resnet18", ["faint", "strong"])
    assert checkpoint.preprocessing == small_preprocessing(32)
    (tmp_path / "other" / "bright").mkdir(parents=True)
    (tmp_path / "other" / "bright" / "0.png").write_bytes((tmp_path / "target" / "faint" / "0.png").read_bytes())
    config.target_labelled = tmp_path / "other"
    with pytest.raises(TrainError, match=r"has classes \['bright'\]; the source has \['faint', 'strong'\]"):
        run_dann(config, log=messages.append)


def test_training_runs_on_cuda_when_it_works_and_says_so_when_asked_for_without_it(tmp_path, capsys):
    if torch.cuda.is_available():
        assert choose("auto").type == "cuda"
    else:
        assert choose("auto").type == "cpu"
        with pytest.raises(TrainError, match="--device cuda, but torch finds no working CUDA device here"):
            choose("cuda")
        data = hymenoptera(tmp_path, 2, 1)
        assert cli.main(["finetune", str(data), "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
        assert "no working CUDA device" in capsys.readouterr().err
    assert choose("cpu").type == "cpu"
