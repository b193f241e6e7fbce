"""The export tool on the real embedded default: ONNX graph, model card, parity, refusals."""

from __future__ import annotations

import onnx
import pytest
from google.protobuf import json_format

from offshelf.export import cli
from offshelf.export.repository import default_check_images, write_model
from offshelf.export.zoo import ExportError, build
from offshelf.protos.v1 import model_card_pb2


def read_card(version_dir) -> model_card_pb2.ModelCard:
    return json_format.Parse((version_dir / "card.json").read_text(), model_card_pb2.ModelCard())


def test_exported_graph_has_a_dynamic_batch_and_both_outputs(model_repo):
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
    assert card.weights.file_name == "efficientnet-lite0-57934424.pth"
    assert card.weights.sha256.startswith("57934424")  # torch hub names carry the hash prefix
    assert list(card.preprocessing.mean) == [0.5] * 3 and list(card.preprocessing.std) == [0.5] * 3
    assert [(o.name, o.dim, o.pooling) for o in card.outputs] == [("logits", 1000, "none"), ("embedding", 1280, "avg")]
    assert len(card.outputs[0].labels) == 1000
    assert card.export.opset >= 17 and card.export.precision == "fp32"
    assert card.parity.images >= 4
    assert 0 < card.parity.max_abs_diff <= 1e-4
    assert set(card.parity.max_abs_diff_by_output) == {"logits", "embedding"}


def test_export_refuses_to_write_when_parity_exceeds_the_tolerance(tmp_path):
    with pytest.raises(ExportError, match="nothing was written"):
        write_model(
            build("efficientnet-lite0"),
            "efficientnet-lite0",
            tmp_path,
            "m",
            default_check_images()[:2],
            tolerance=0.0,
            log=lambda _: None,
        )
    assert list((tmp_path / "m").iterdir()) == []


def test_cli_writes_the_next_version_and_prints_its_stages(model_repo, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in default_check_images()[:2]:
        (photos / photo.name).write_bytes(photo.read_bytes())
    repo = tmp_path / "repo"
    for expected_version in (1, 2):
        assert cli.main(["efficientnet-lite0", "--repo", str(repo), "--check-images", str(photos)]) == 0
        assert read_card(repo / "efficientnet-lite0" / str(expected_version)).version == expected_version
    out = capsys.readouterr().out
    for stage in ("loading its weights", "exported to ONNX", "checked against torch on 2 photos", "wrote"):
        assert stage in out


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ExportError, match="unknown architecture 'resnet9000'; choose one of: efficientnet-lite0"):
        build("resnet9000")
