"""A collection's configuration (service/index/config.py) is stored as the wire's Collection message was, by
protobuf's JSON: what is stored now reads back, and what was stored before (by json_format) reads as it was."""

from __future__ import annotations

from google.protobuf import json_format

from offshelf.protos.v1 import index_pb2
from offshelf.service.index.config import CollectionConfig, HnswParams, IvfPqParams, Metric
from offshelf.service.models.binding import Binding

CONFIG = CollectionConfig(
    name="shelves",
    binding=Binding("efficientnet-lite0", 3, "gem", "gem", "ab" * 32, 1280),
    metric=Metric.L2,
    index_type="ivfpq",
    hnsw=HnswParams(),
    ivfpq=IvfPqParams(nlist=64, m=32, nbits=8, nprobe=8, train_size=2560, refine_factor=10),
    whitening_dim=256,
)
WIRE = index_pb2.Collection(
    name="shelves",
    binding=index_pb2.Binding(
        model="efficientnet-lite0", version=3, output="gem", pooling="gem", preprocessing_hash="ab" * 32, dim=1280
    ),
    metric=index_pb2.METRIC_L2,
    index_type="ivfpq",
    ivfpq=index_pb2.IvfPqParams(nlist=64, m=32, nbits=8, nprobe=8, train_size=2560, refine_factor=10),
    whitening_dim=256,
)


def test_a_config_is_stored_as_protobufs_json_of_the_wire_message():
    assert json_format.Parse(CONFIG.to_json(), index_pb2.Collection()) == WIRE
    assert CollectionConfig.from_json(CONFIG.to_json()) == CONFIG


def test_configs_stored_before_read_as_they_were():
    assert CollectionConfig.from_json(json_format.MessageToJson(WIRE, preserving_proto_field_name=True)) == CONFIG
    assert CollectionConfig.from_json(json_format.MessageToJson(WIRE)) == CONFIG  # camelCase (collection.json)
    own = index_pb2.Collection(name="mine", binding=index_pb2.Binding(dim=8))  # defaults left out
    assert CollectionConfig.from_json(json_format.MessageToJson(own)) == CollectionConfig("mine", Binding(dim=8))
