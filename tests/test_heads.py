"""Heads on the real server: training in the background, classification, hot swap, bad input; TTA."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from offshelf.clients import Client
from offshelf.protos.v1 import heads_pb2

from common import serving, shared_photos, skimage_photo


def hymenoptera(split: str, per_class: int) -> tuple[list, list[str]]:
    photos = [p for cls in ("ants", "bees") for p in shared_photos(f"hymenoptera/{split}/{cls}", per_class)]
    return photos, [p.parent.name for p in photos]


def accuracy(client: Client, head: str, photos: list, labels: list[str], **options) -> float:
    results = [
        r
        for start in range(0, len(photos), 32)
        for r in client.classify(photos[start : start + 32], head, k=1, **options)
    ]
    return float(np.mean([r[0][0] == label for r, label in zip(results, labels, strict=True)]))


def test_logreg_trains_in_the_background_reports_cv_metrics_and_classifies(client):
    photos, labels = hymenoptera("train", 40)
    job = client.train_head("heads-bugs-logreg", "logreg", images=photos, labels=labels)
    assert job.state == heads_pb2.JOB_STATE_QUEUED and job.version == 1
    head = client.wait_for_head("heads-bugs-logreg")
    card = head.card
    assert (card.kind, list(card.labels), card.version) == ("logreg", ["ants", "bees"], 1)
    assert card.binding.model == "efficientnet-lite0" and card.binding.output == "embedding"
    assert card.metrics.examples == 80 and card.metrics.folds == 5 and card.metrics.cv_accuracy >= 0.85
    assert len(card.metrics.confusion) == 4 and sum(card.metrics.confusion) == 80
    assert card.metrics.c > 0
    val, val_labels = hymenoptera("val", 25)
    assert accuracy(client, "heads-bugs-logreg", val, val_labels) >= 0.85
    (both,) = client.classify([val[0]], "heads-bugs-logreg", k=2)
    assert [label for label, _ in both] in (["ants", "bees"], ["bees", "ants"])
    assert sum(p for _, p in both) == pytest.approx(1.0, abs=1e-5)


def test_linear_svm_from_a_collections_labelled_items(client):
    photos, labels = hymenoptera("train", 30)
    client.create_collection("heads-bugs")
    client.add_images("heads-bugs", photos, labels=labels, progress=False)
    client.add("heads-bugs", images=[skimage_photo("coffee.png")])  # unlabelled items are left out
    client.train_head("heads-bugs-svm", "linear-svm", collection="heads-bugs")
    head = client.wait_for_head("heads-bugs-svm")
    client.delete_collection("heads-bugs")  # the head keeps what it learned; the shared server keeps no collection
    assert head.card.metrics.examples == 60
    val, val_labels = hymenoptera("val", 20)
    assert accuracy(client, "heads-bugs-svm", val, val_labels) >= 0.85
    (scores,) = client.classify([val[0]], "heads-bugs-svm", k=2)
    assert sum(p for _, p in scores) == pytest.approx(1.0, abs=1e-5)


def test_ncm_learns_from_a_handful_and_adds_classes_one_at_a_time(client):
    photos, labels = hymenoptera("train", 3)
    client.train_head("heads-few", "ncm", images=photos, labels=labels)
    assert list(client.wait_for_head("heads-few").card.labels) == ["ants", "bees"]
    flowers = shared_photos("flowers/daisy", 3)
    client.train_head("heads-few", "ncm", images=flowers, labels=["daisy"] * 3, add_classes=True)
    head = client.wait_for_head("heads-few")
    assert list(head.card.labels) == ["ants", "bees", "daisy"] and list(head.versions) == [1, 2]
    daisies = shared_photos("flowers/daisy", 12)[3:]
    assert accuracy(client, "heads-few", daisies, ["daisy"] * len(daisies)) >= 0.8
    val, val_labels = hymenoptera("val", 15)
    assert accuracy(client, "heads-few", val, val_labels) >= 0.7


def test_retraining_hot_swaps_without_dropping_requests(client, server):
    photos, labels = hymenoptera("train", 20)
    client.train_head("heads-swap", "logreg", images=photos, labels=labels)
    client.wait_for_head("heads-swap")
    errors, versions, stop = [], set(), threading.Event()

    def classify_continuously() -> None:
        with Client(server.address) as own:
            while not stop.is_set():
                try:
                    response = own.stubs["heads"].Classify(
                        heads_pb2.ClassifyRequest(head="heads-swap", images=[photos[0].read_bytes()], k=1), timeout=30
                    )
                    versions.add(response.version)
                except grpc.RpcError as err:
                    errors.append(err)

    def seen(version: int) -> None:
        deadline = time.monotonic() + 60
        while version not in versions:
            assert time.monotonic() < deadline and not errors, (versions, errors)
            time.sleep(0.05)

    threads = [threading.Thread(target=classify_continuously) for _ in range(3)]
    for t in threads:
        t.start()
    seen(1)
    client.train_head("heads-swap", "logreg", images=photos[::-1], labels=labels[::-1])
    assert client.wait_for_head("heads-swap").card.version == 2
    seen(2)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and versions == {1, 2}


def status(call) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code().name, caught.value.details()


def test_bad_head_requests(client):
    photos, labels = hymenoptera("train", 2)
    assert status(lambda: client.train_head("heads-x", "random-forest", images=photos, labels=labels)) == (
        "INVALID_ARGUMENT",
        "unknown head kind 'random-forest'; choose one of: logreg, linear-svm, ncm",
    )
    assert status(lambda: client.train_head("heads-x", "logreg", collection="nope"))[0] == "NOT_FOUND"
    assert (
        status(lambda: client.train_head("heads-x", "logreg", images=photos, labels=["ants", "", "bees", "bees"]))[1]
        == "image 1 has no label"
    )
    client.train_head("heads-one-class", "logreg", images=photos[:2], labels=["ants", "ants"])
    with pytest.raises(RuntimeError, match="logreg needs at least 2 classes"):
        client.wait_for_head("heads-one-class")
    assert client.get_head("heads-one-class").job.state == heads_pb2.JOB_STATE_FAILED
    refused = status(lambda: client.classify(photos, "heads-one-class"))[1]
    assert refused.startswith("head 'heads-one-class' has no version ready")
    assert status(lambda: client.classify(photos, "missing"))[0] == "NOT_FOUND"
    client.train_head("heads-ok", "ncm", images=photos, labels=labels)
    client.wait_for_head("heads-ok")
    request = heads_pb2.ClassifyRequest(head="heads-ok", model="resnet50", images=[photos[0].read_bytes()])
    code, details = status(lambda: client.stubs["heads"].Classify(request, timeout=30))
    assert code == "FAILED_PRECONDITION" and "efficientnet-lite0 v1 output 'embedding'" in details
    assert status(lambda: client.classify([], "heads-ok"))[1].startswith("no images")
    assert status(lambda: client.classify([b"junk"], "heads-ok"))[1].startswith("image 0 is not a JPEG")
    client.delete_head("heads-ok")
    assert "heads-ok" not in [h.card.name or h.job.head for h in client.list_heads()]


def test_heads_survive_a_restart(tiny_repo, tmp_path):
    photos, labels = hymenoptera("train", 5)
    with serving(tiny_repo, tmp_path, drain_seconds=0) as proc:  # the tiny model: what is tested is the restart
        with Client(proc.address) as client:
            client.train_head("heads-kept", "ncm", images=photos, labels=labels, model="random-projection-1280")
            before = client.wait_for_head("heads-kept").card
            expected = client.classify(photos[:2], "heads-kept", k=2)
        assert proc.terminate() == 0
    with serving(tiny_repo, tmp_path, drain_seconds=0) as proc, Client(proc.address) as client:
        assert client.get_head("heads-kept").card == before
        assert client.classify(photos[:2], "heads-kept", k=2) == expected


def test_test_time_augmentation_for_embed_and_classify(client):
    photo = skimage_photo("chelsea.png")
    plain = client.embed([photo], outputs=["embedding"])["embedding"][0]
    flip = client.embed([photo], outputs=["embedding"], augmentation="flip")["embedding"][0]
    ten = client.embed([photo], outputs=["embedding"], augmentation="10crop")["embedding"][0]
    assert 0 < np.abs(flip - plain).max() and 0 < np.abs(ten - flip).max()
    cosine = float(ten @ plain / np.linalg.norm(ten) / np.linalg.norm(plain))
    assert 0.9 < cosine < 0.9999
    logits = client.embed([photo], outputs=["logits"], augmentation="10crop")["logits"][0]
    assert 281 <= int(logits.argmax()) <= 285
    photos, labels = hymenoptera("train", 10)
    client.train_head("heads-tta", "logreg", images=photos, labels=labels)
    client.wait_for_head("heads-tta")
    for augmentation in ("flip", "10crop"):
        (top,) = client.classify([photos[0]], "heads-tta", k=1, augmentation=augmentation)
        assert top[0][0] == "ants"


def test_merge_writes_backbone_and_head_as_one_onnx_that_matches_classify(client, server, model_repo, tmp_path):
    import json
    import subprocess
    import sys

    import onnxruntime as ort

    from offshelf.export.repository import load_batch
    from offshelf.service.models.loaded_model import read_card

    photos, labels = hymenoptera("train", 10)
    client.train_head("heads-merged", "linear-svm", images=photos, labels=labels)
    version = client.wait_for_head("heads-merged").card.version
    out = tmp_path / "merged.onnx"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "offshelf.clients.cli",
            "export",
            "merge",
            str(model_repo / "efficientnet-lite0" / "1"),
            str(server.data_dir / "heads" / "heads-merged" / str(version)),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding", "probabilities"]
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == ["ants", "bees"]
    val, _ = hymenoptera("val", 3)
    pre = read_card(model_repo / "efficientnet-lite0" / "1").preprocessing
    (probabilities,) = session.run(["probabilities"], {"image": load_batch(val, pre).numpy()})
    served = client.classify(val, "heads-merged", k=2)
    for row, top in zip(probabilities, served, strict=True):
        assert {label: p for label, p in top} == pytest.approx(
            dict(zip(["ants", "bees"], row.tolist(), strict=True)), abs=2e-3
        )
