"""Fine-tuning and the from-scratch baseline on real photos, and the checkpoint the export tool reads."""

from __future__ import annotations

from test_export import read_card

from offshelf.export import cli as export_cli
from offshelf.export.zoo import build_network, last_linear
from offshelf.train import cli
from offshelf.train.finetune import FinetuneConfig, blocks, finetune, freeze, parameter_groups

from support import SHARED_DATA, shared_photos


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
    shared_photos("hymenoptera", 1)
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "finetune",
                str(SHARED_DATA / "hymenoptera"),
                "--out",
                str(out),
                "--freeze",
                "_blocks.13",
                "--epochs",
                "2",
                "--limit-per-class",
                "16",
            ]
        )
        == 0
    )
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        export_cli.main(
            [
                "efficientnet-lite0",
                "--weights",
                str(out / "checkpoint.pt"),
                "--repo",
                str(tmp_path / "repo"),
                "--name",
                "bugs",
            ]
        )
        == 0
    )
    card = read_card(tmp_path / "repo" / "bugs" / "1")
    assert list(card.outputs[0].labels) == ["ants", "bees"] and card.outputs[0].dim == 2


def _hymenoptera_run(tmp_path, **overrides):
    """A small fine-tuning run with a learning rate high enough to make validation loss get worse."""
    shared_photos("hymenoptera", 1)
    config = FinetuneConfig(
        data=SHARED_DATA / "hymenoptera",
        out=tmp_path,
        freeze="_blocks.15",
        lr_head=3.0,
        patience=1,
        limit_per_class=12,
        **overrides,
    )
    return finetune(config, log=lambda _: None)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    history = _hymenoptera_run(tmp_path, epochs=6, init_head=False)
    assert len(history.val_loss) < 6
    assert history.val_loss[history.best_epoch - 1] == min(history.val_loss)


def test_the_linear_probe_starts_fine_tuning_and_is_kept_when_nothing_beats_it(tmp_path):
    history = _hymenoptera_run(tmp_path, epochs=2)
    assert history.best_epoch == 0 and history.best_accuracy >= 0.85  # the probe; lr 3.0 only made it worse


def test_from_scratch_trains_the_same_pipeline_from_random_weights(tmp_path, capsys):
    shared_photos("hymenoptera", 1)
    assert (
        cli.main(
            [
                "finetune",
                str(SHARED_DATA / "hymenoptera"),
                "--out",
                str(tmp_path),
                "--from-scratch",
                "--arch",
                "resnet18",
                "--epochs",
                "1",
                "--limit-per-class",
                "8",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    assert "frozen blocks: none" in capsys.readouterr().out
    assert (tmp_path / "checkpoint.pt").exists()


def test_dann_adapts_to_an_unlabelled_target_domain_and_reports_both_accuracies(tmp_path):
    from PIL import Image, ImageOps

    from offshelf.train.dann import DannConfig, run_dann

    shared_photos("hymenoptera", 1)
    source = tmp_path / "source"
    for split, folder, count in (
        ("train", source, 16),
        ("train", tmp_path / "target", 16),
        ("val", tmp_path / "target-labelled", 10),
    ):
        for cls in ("ants", "bees"):
            (folder / cls).mkdir(parents=True, exist_ok=True)
            for photo in sorted((SHARED_DATA / "hymenoptera" / split / cls).glob("*.jpg"))[:count]:
                image = Image.open(photo).convert("RGB")
                if folder != source:  # the target domain: inverted greyscale photos
                    image = ImageOps.invert(image.convert("L").convert("RGB"))
                image.save(folder / cls / photo.name)
    report = run_dann(
        DannConfig(
            source=source,
            target=tmp_path / "target",
            target_labelled=tmp_path / "target-labelled",
            out=tmp_path / "out",
            freeze="_blocks.14",
            epochs=1,
            batch_size=8,
        ),
        log=lambda _: None,
    )
    assert 0.0 <= report.source_only_accuracy <= 1.0 and 0.0 <= report.adapted_accuracy <= 1.0
    assert (tmp_path / "out" / "checkpoint.pt").exists()
