"""A tiny ONNX model with a DIM-d output, so benchmarks can bind collections of any dimension without torch."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from google.protobuf import json_format
from onnx import TensorProto, helper

from offshelf.protos.v1 import model_card_pb2

SIZE = 8  # input crop, pixels


def write_identity_model(repo: pathlib.Path, dim: int) -> pathlib.Path:
    """repo/random-projection-<dim>/1: embedding = flatten(image) @ W (W fixed, random). Returns repo."""
    name = f"random-projection-{dim}"
    version_dir = repo / name / "1"
    if (version_dir / "card.json").exists():
        return repo
    version_dir.mkdir(parents=True, exist_ok=True)
    weights = np.random.default_rng(0).standard_normal((3 * SIZE * SIZE, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["embedding"])],
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten().tolist())],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), version_dir / "model.onnx"
    )
    card = model_card_pb2.ModelCard(
        name=name,
        version=1,
        architecture="random-projection",
        preprocessing=model_card_pb2.Preprocessing(
            input_name="image",
            resize_shorter=SIZE,
            crop_height=SIZE,
            crop_width=SIZE,
            interpolation="bilinear",
            channel_order="RGB",
            mean=[0.5] * 3,
            std=[0.5] * 3,
        ),
        outputs=[model_card_pb2.OutputSpec(name="embedding", layer="projection", pooling="none", dim=dim)],
    )
    (version_dir / "card.json").write_text(json_format.MessageToJson(card, preserving_proto_field_name=True))
    return repo
