"""Collections of one's own vectors (no model binding) on both stores: created with a dimension, added to and
searched by vector or id; images, which no model can embed for them, are refused with FAILED_PRECONDITION."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest

from offshelf.clients import Client, FailedPrecondition, InvalidArgument
from offshelf.protos.v1 import embedding_pb2, index_pb2

from common import serving, skimage_photo

DIM = 24


@pytest.fixture(params=["embedded", "milvus"])
def store_server(request):
    """A server on the embedded store (the tiny model's), or one with its collections on Milvus."""
    return request.getfixturevalue("tiny_server" if request.param == "embedded" else "milvus_server")


@pytest.fixture
def client(store_server):
    with Client(store_server.address) as c:
        yield c


@pytest.fixture
def own(client):
    name = f"own-{uuid.uuid4().hex[:8]}"
    client.create_collection(name, dim=DIM, metric="l2", index_type="hnsw", hnsw={"m": 8})
    yield name
    client.delete_collection(name)


def vectors(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)


def test_a_collection_is_created_with_a_dimension_and_no_model(client, own):
    info = client.get_collection(own)
    assert info.binding == index_pb2.Binding(dim=DIM)
    assert (info.metric, info.index_type, info.hnsw.m) == (index_pb2.METRIC_L2, "hnsw", 8)
    assert own in [c.name for c in client.list_collections()]


def test_own_vectors_are_added_and_searched_by_vector_or_id(client, own):
    data = vectors(40)
    ids = [f"v{i:02d}" for i in range(40)]
    labels = ["even" if i % 2 == 0 else "odd" for i in range(40)]
    client.add(own, vectors=data, ids=ids, labels=labels, metadata=[{"shelf": str(i % 4)} for i in range(40)])
    assert client.get_collection(own).count == 40

    hits = client.search(own, vector=data[7], k=3)
    assert hits[0].id == "v07" and hits[0].score == pytest.approx(0, abs=1e-4) and hits[0].label == "odd"
    assert [h.id for h in client.search(own, id="v07", k=3)] == [h.id for h in hits]
    batch = client.search_batch(own, vectors=data[:2], ids=["v05"], k=1)
    assert [[h.id for h in row] for row in batch] == [["v00"], ["v01"], ["v05"]]
    filtered = client.search(own, vector=data[7], k=5, labels=["even"], metadata={"shelf": "2"})
    assert filtered and all(int(h.id[1:]) % 4 == 2 for h in filtered)
    (item,) = client.get_items(own, ["v07"], with_vectors=True)
    np.testing.assert_allclose(item.vector, data[7], atol=1e-6)  # an L2 collection keeps the vectors as given

    with pytest.raises(InvalidArgument, match=f"has 5 values; the collection's vectors have {DIM}"):
        client.add(own, vectors=[[1.0] * 5])

    copy = client.copy_collection(own, client, as_name=f"{own}-copy", progress=False)  # a copy has no model either
    try:
        assert (copy.binding, copy.count) == (index_pb2.Binding(dim=DIM), 40)
        assert client.search(copy.name, vector=data[7], k=1)[0].id == "v07"
    finally:
        client.delete_collection(copy.name)


def test_images_are_refused_naming_the_fix(client, own):
    image = skimage_photo("coffee.png")
    fix = "no model to embed images with; send vectors"
    with pytest.raises(FailedPrecondition, match=fix):
        client.add(own, images=[image])
    with pytest.raises(FailedPrecondition, match=fix):
        client.search(own, image=image, k=1)
    with pytest.raises(FailedPrecondition, match=fix):
        client.search_batch(own, images=[image], vectors=vectors(1), k=1)
    assert client.get_collection(own).count == 0
    stub = client.stubs["index"]
    claimed = index_pb2.SearchRequest(collection=own, vector=embedding_pb2.Vector(values=[1.0] * DIM), k=1, model="m")
    with pytest.raises(grpc.RpcError, match=f"your own {DIM}-d vectors \\(no model\\)") as refused:
        stub.Search(claimed)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_dimension_and_model_are_one_or_the_other(client):
    name = f"own-{uuid.uuid4().hex[:8]}"
    with pytest.raises(InvalidArgument, match="give a model .* or dim .*, not both"):
        client.create_collection(name, model="random-projection-1280", dim=8)
    with pytest.raises(InvalidArgument, match="dim=40000: 1 to 32768 values"):
        client.create_collection(name, dim=40000)
    with pytest.raises(grpc.RpcError, match="or set dim for a collection of your own vectors") as refused:
        client.stubs["index"].CreateCollection(index_pb2.CreateCollectionRequest(name=name))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert name not in [c.name for c in client.list_collections()]


def test_an_own_vector_collection_comes_back_after_a_restart(tiny_repo, tmp_path):
    """The embedded store keeps the binding-less configuration; an ivfpq one trains on own vectors too."""
    data = vectors(300, seed=1)
    with serving(tiny_repo, tmp_path, drain_seconds=0) as server, Client(server.address) as client:
        client.create_collection("mine", dim=DIM, index_type="ivfpq", ivfpq={"nlist": 4, "nbits": 4, "m": 4})
        client.add("mine", vectors=data, ids=[str(i) for i in range(300)])
    with serving(tiny_repo, tmp_path, drain_seconds=0) as server, Client(server.address) as client:
        info = client.get_collection("mine")
        assert (info.binding, info.count, info.ivfpq.nlist) == (index_pb2.Binding(dim=DIM), 300, 4)
        assert client.search("mine", vector=data[123], k=1)[0].id == "123"


def test_a_head_is_not_trained_on_own_vectors(client, own):
    """Heads classify images: a collection without a model could train one that nothing can ever use."""
    client.add(own, vectors=vectors(4), labels=["a", "b", "a", "b"])
    with pytest.raises(FailedPrecondition, match="holds your own vectors, with no model to embed the images"):
        client.train_head(f"head-{own}", "ncm", collection=own)
