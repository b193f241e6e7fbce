"""The Index service on the real server: collections, add/search/remove round trips, bad input; each test runs
on both stores (the embedded one and a real Milvus)."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest

from offshelf.protos.v1 import embedding_pb2, index_pb2

from common import shared_photos, skimage_photo

DIM = 1280


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


@pytest.fixture(scope="module", params=["embedded", "milvus"])
def server(request, server):
    """The shared server, or its twin with collections on Milvus. What the stores do alike is tested in process over
    both (test_store_contract.py); tests marked WIRE_ONLY are about the servicer and run on the embedded store."""
    return server if request.param == "embedded" else request.getfixturevalue("milvus_server")


WIRE_ONLY = pytest.mark.parametrize("server", ["embedded"], indirect=True)


@pytest.fixture(scope="module")
def on_milvus(server) -> bool:
    return "milvus_uri" in server.settings


@pytest.fixture(scope="module")
def empty_collection(server):
    """One collection that the bad requests below must leave empty (a Milvus collection takes seconds to load)."""
    from offshelf.clients import Client

    with Client(server.address) as client:
        yield client.create_collection(f"test-empty-{uuid.uuid4().hex[:12]}").name


@pytest.fixture
def collection(client):
    name = f"test-{uuid.uuid4().hex[:12]}"
    info = client.create_collection(name)
    yield info.name
    try:
        client.delete_collection(name)
    except grpc.RpcError:
        pass


def test_create_binds_the_collection_to_the_model_output(client, collection):
    info = client.get_collection(collection)
    assert info.binding.model == "efficientnet-lite0" and info.binding.version == 1
    assert (info.binding.output, info.binding.dim, info.binding.pooling) == ("embedding", DIM, "avg")
    assert len(info.binding.preprocessing_hash) == 64
    assert info.index_type == "flat" and info.metric == index_pb2.METRIC_INNER_PRODUCT
    assert info.count == 0
    assert collection in [c.name for c in client.list_collections()]


def test_vector_round_trip_with_labels_metadata_replace_and_remove(client, collection, on_milvus):
    vectors = unit_vectors(20, seed=1)
    ids = client.add(
        collection,
        vectors=vectors[:10],
        ids=[f"v{i}" for i in range(10)],
        labels=[f"class-{i % 3}" for i in range(10)],
        metadata=[{"n": str(i)} for i in range(10)],
    )
    assert ids == [f"v{i}" for i in range(10)]
    assigned = client.add(collection, vectors=vectors[10:12])
    assert len(set(assigned)) == 2 and all(len(i) == 32 for i in assigned)

    (top, *_) = client.search(collection, vector=vectors[4] * 3.0, k=3)  # scale does not matter for cosine
    assert (top.id, top.label, top.metadata) == ("v4", "class-1", {"n": "4"})
    assert top.score == pytest.approx(1.0, abs=1e-5)
    assert client.search(collection, id="v7", k=1)[0].id == "v7"

    client.add(collection, vectors=vectors[15:16], ids=["v4"], labels=["replaced"])  # same id: replaces
    assert client.get_collection(collection).count == 12
    assert client.search(collection, vector=vectors[15], k=1)[0].label == "replaced"
    assert "v4" not in [h.id for h in client.search(collection, vector=vectors[4], k=12) if h.score > 0.99]

    removed = client.remove(collection, ["v1", "v2", "nope"])
    assert (removed.removed, list(removed.not_found), removed.count) == (2, ["nope"], 10)
    assert {"v1", "v2"}.isdisjoint(h.id for h in client.search(collection, vector=vectors[1], k=10))
    code, details = status_of(lambda: client.search(collection, id="v1", k=1))
    assert code == grpc.StatusCode.NOT_FOUND and "no item 'v1'" in details
    assert client.get_collection(collection).bytes_on_disk > 10 * DIM * 4 or on_milvus  # Milvus keeps the files


@WIRE_ONLY
def test_search_by_image_finds_the_same_object_and_flip_works(client, collection):
    photos = shared_photos("ukbench", 16)
    client.add_images(collection, photos, ids=[p.stem for p in photos], progress=False)
    hits = client.search(collection, image=photos[5], k=4)
    assert hits[0].id == photos[5].stem and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert {h.id for h in hits} == {p.stem for p in photos[4:8]}
    flipped = client.search(collection, image=photos[5], k=4, flip=True)
    assert {h.id for h in flipped} == {p.stem for p in photos[4:8]}
    assert flipped[0].score < 0.9999  # the mirrored view changes the query


@WIRE_ONLY
def test_search_batch_answers_each_query_as_search_would(client, collection):
    vectors = unit_vectors(40, seed=9)
    client.add(collection, vectors=vectors, ids=[str(i) for i in range(40)])
    photo = skimage_photo("chelsea.png")
    batch = client.search_batch(collection, images=[photo], vectors=vectors[:5], ids=["30", "31"], k=3)
    singles = (
        [client.search(collection, image=photo, k=3)]
        + [client.search(collection, vector=v, k=3) for v in vectors[:5]]
        + [client.search(collection, id=i, k=3) for i in ("30", "31")]
    )
    assert batch == singles
    bad = index_pb2.SearchBatchRequest(
        collection=collection,
        k=3,
        queries=[index_pb2.Query(id="1"), index_pb2.Query(vector=embedding_pb2.Vector(values=[1.0, 2.0]))],
    )
    code, details = status_of(lambda: client.stubs["index"].SearchBatch(bad, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("query 1 vector has 2 values")


@WIRE_ONLY
def test_client_streaming_add(client, collection):
    vectors = unit_vectors(30, seed=2)
    requests = [
        index_pb2.AddRequest(
            collection=collection,
            items=[
                index_pb2.Item(id=f"s{i}", vector=embedding_pb2.Vector(values=vectors[i].tolist(), dim=DIM))
                for i in range(start, start + 10)
            ],
        )
        for start in (0, 10, 20)
    ]
    response = client.stubs["index"].AddStream(iter(requests), timeout=30)
    assert list(response.ids) == [f"s{i}" for i in range(30)] and response.count == 30


@WIRE_ONLY
def test_whitening_is_learned_and_applied_to_adds_and_queries(client, collection):
    vectors = unit_vectors(300, seed=3)
    client.add(collection, vectors=vectors[:200], ids=[str(i) for i in range(200)])
    code, details = status_of(lambda: client.train_whitening(collection, dim=500))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "needs more than 500 vectors" in details
    info = client.train_whitening(collection, dim=64)
    assert info.whitening_dim == 64
    client.add(collection, vectors=vectors[200:], ids=[str(i) for i in range(200, 300)])
    assert [client.search(collection, id=str(i), k=1)[0].id for i in (3, 150, 250)] == ["3", "150", "250"]
    (before, after) = client.get_items(collection, ["3", "250"], with_vectors=True)  # as added, not whitened
    np.testing.assert_allclose(np.stack([before.vector, after.vector]), vectors[[3, 250]], atol=1e-6)
    assert client.train_whitening(collection, dim=32).whitening_dim == 32  # learned again, from the vectors as added
    assert client.get_collection(collection).count == 300
    assert client.search(collection, vector=vectors[250], k=1)[0].id == "250"


@WIRE_ONLY
def test_whitening_can_be_learned_from_another_collection_of_the_same_output(client, collection):
    """PCA-whitening learned on an independent set of photos, as the papers do (issue 17)."""
    independent = f"test-independent-{uuid.uuid4().hex[:8]}"
    client.create_collection(independent)
    try:
        client.add(independent, vectors=unit_vectors(150, seed=5), ids=[str(i) for i in range(150)])
        client.add(collection, vectors=unit_vectors(20, seed=6), ids=[str(i) for i in range(20)])
        info = client.train_whitening(collection, dim=100, learn_from=independent)  # from 150: its own 20 are too few
        assert (info.whitening_dim, info.count) == (100, 20)
        assert [client.search(collection, id=str(i), k=1)[0].id for i in (0, 19)] == ["0", "19"]
        code, details = status_of(lambda: client.train_whitening(collection, dim=200, learn_from=independent))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and f"collection {independent!r} has 150" in details
        other = f"test-other-{uuid.uuid4().hex[:8]}"
        client.create_collection(other, output="logits")
        code, details = status_of(lambda: client.train_whitening(collection, learn_from=other))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "the same model output" in details
        client.delete_collection(other)
    finally:
        client.delete_collection(independent)


def test_database_side_augmentation_is_for_embedded_collections(client, collection, on_milvus):
    client.add(collection, vectors=unit_vectors(4, seed=7), ids=list("abcd"))
    if on_milvus:
        code, details = status_of(lambda: client.augment_database(collection))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "runs on embedded collections" in details
    else:
        assert client.augment_database(collection).count == 4


def test_binding_mismatch_is_a_failed_precondition_naming_both(client, collection):
    request = index_pb2.AddRequest(
        collection=collection,
        model="resnet50",
        items=[index_pb2.Item(vector=embedding_pb2.Vector(values=unit_vectors(1, 4)[0].tolist()))],
    )
    code, details = status_of(lambda: client.stubs["index"].Add(request, timeout=30))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "efficientnet-lite0 v1 output 'embedding'" in details and "'resnet50'" in details
    search = index_pb2.SearchRequest(collection=collection, output="logits", k=1, id="x")
    code, details = status_of(lambda: client.stubs["index"].Search(search, timeout=30))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "'logits'" in details


def test_a_batch_with_one_bad_item_is_rejected_whole(client, collection):
    good = unit_vectors(3, seed=5)
    photo = skimage_photo("coffee.png").read_bytes()
    items = [
        index_pb2.Item(id="a", vector=embedding_pb2.Vector(values=good[0].tolist())),
        index_pb2.Item(id="b", image=photo),
        index_pb2.Item(id="c", image=b"not an image"),
    ]
    code, details = status_of(
        lambda: client.stubs["index"].Add(index_pb2.AddRequest(collection=collection, items=items))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("item 2 is not a JPEG")
    assert client.get_collection(collection).count == 0


@pytest.mark.parametrize(
    ("call", "code", "hint"),
    [
        (lambda c, n: c.search("no-such", vector=[0.0] * DIM, k=1), "NOT_FOUND", "no collection named 'no-such'"),
        (lambda c, n: c.add(n), "INVALID_ARGUMENT", "no items"),
        (lambda c, n: c.add(n, vectors=unit_vectors(1001, 6)), "INVALID_ARGUMENT", "more than the limit of 1000"),
        (lambda c, n: c.add(n, vectors=[[1.0] * 7]), "INVALID_ARGUMENT", "has 7 values; the collection's vectors have"),
        (lambda c, n: c.add(n, vectors=[[0.0] * DIM]), "INVALID_ARGUMENT", "all zeros"),
        (lambda c, n: c.add(n, vectors=unit_vectors(2, 7), ids=["x", "x"]), "INVALID_ARGUMENT", "appears twice"),
        (lambda c, n: c.search(n, vector=[1.0] * DIM, k=0), "INVALID_ARGUMENT", "ask for 1 to 1000 results"),
        (lambda c, n: c.search(n, vector=[1.0] * DIM, k=1001), "INVALID_ARGUMENT", "ask for 1 to 1000 results"),
        (lambda c, n: c.search(n, vector=[1.0] * 3, k=1), "INVALID_ARGUMENT", "query vector has 3 values"),
        (lambda c, n: c.search(n, k=1), "INVALID_ARGUMENT", "query is empty: set image, vector or id"),
        (lambda c, n: c.search(n, image=b"", k=1), "INVALID_ARGUMENT", "query image is empty"),
        (lambda c, n: c.remove(n, []), "INVALID_ARGUMENT", "by ids or by a non-empty filter"),
        (lambda c, n: c.create_collection(n), "ALREADY_EXISTS", "exists"),
        (lambda c, n: c.create_collection("bad name!"), "INVALID_ARGUMENT", "is invalid"),
        (lambda c, n: c.create_collection("x1", index_type="lsh"), "INVALID_ARGUMENT", "unknown index_type 'lsh'"),
        (lambda c, n: c.create_collection("x2", output="fc7"), "INVALID_ARGUMENT", "no output 'fc7'"),
        (lambda c, n: c.create_collection("x3", model="vgg16"), "NOT_FOUND", "no model named 'vgg16'"),
        (lambda c, n: c.get_collection("no-such"), "NOT_FOUND", "no collection named"),
        (lambda c, n: c.delete_collection("no-such"), "NOT_FOUND", "no collection named"),
    ],
)
def test_bad_index_requests_get_precise_statuses(client, empty_collection, call, code, hint):
    got, details = status_of(lambda: call(client, empty_collection))
    assert got.name == code
    assert hint in details
    assert client.get_collection(empty_collection).count == 0
    assert client.health() == "SERVING"


def test_delete_removes_the_collection_and_its_files(server, client, on_milvus):
    client.create_collection("index-doomed")
    client.add("index-doomed", vectors=unit_vectors(5, 8))
    client.delete_collection("index-doomed")
    assert "index-doomed" not in [c.name for c in client.list_collections()]
    if on_milvus:
        from pymilvus import MilvusClient

        from offshelf.service.index.milvus.collection import physical_name

        milvus = MilvusClient(uri=server.settings["milvus_uri"])
        assert not milvus.has_collection(physical_name("index-doomed"))
    else:
        assert not (server.data_dir / "collections" / "index-doomed").exists()
