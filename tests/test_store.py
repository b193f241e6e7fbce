"""Collections on SQLite + FAISS through the real server: upsert, filters, min_score, GetItems, ListItems paging,
Remove by filter, and the index file as derived state (caught up or rebuilt at start)."""

from __future__ import annotations

import shutil
import sqlite3

import grpc
import numpy as np
import pytest

from offshelf.clients import Client, InvalidArgument
from offshelf.protos.v1 import index_pb2

from common import ROOT, ServerProcess, write_identity_model

DIM = 16
COUNT = 6000  # more than a filter may select for an exact search, so filtered HNSW searches run too


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def add_all(client: Client, name: str, vectors: np.ndarray, start: int = 0) -> None:
    for first in range(0, len(vectors), 1000):
        rows = range(start + first, start + min(first + 1000, len(vectors)))
        client.add(
            name,
            vectors=vectors[first : first + len(rows)],
            ids=[f"item{i:05d}" for i in rows],
            labels=[["cat", "dog", "bird"][i % 3] for i in rows],
            metadata=[{"shelf": str(i % 10), "even": str(i % 2 == 0).lower()} for i in rows],
        )


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_identity_model(tmp_path_factory.mktemp("store") / "repo", DIM)


@pytest.fixture(scope="module")
def store_server(repo, tmp_path_factory):
    server = ServerProcess(repo, tmp_path_factory.mktemp("store-data"), drain_seconds=0)
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def filled(store_server):
    """An hnsw collection of COUNT labelled vectors with metadata."""
    vectors = unit_vectors(COUNT, seed=3)
    with Client(store_server.address) as client:
        client.create_collection("shelves", model=f"random-projection-{DIM}", index_type="hnsw")
        add_all(client, "shelves", vectors)
    return vectors


@pytest.fixture
def client(store_server):
    with Client(store_server.address) as c:
        yield c


def test_adding_an_existing_id_replaces_the_item(client, filled):
    vectors = unit_vectors(2, seed=9)
    client.create_collection("upsert", model=f"random-projection-{DIM}")
    client.add("upsert", vectors=vectors[:1], ids=["a"], labels=["old"], metadata=[{"v": "1"}])
    client.add("upsert", vectors=vectors[1:], ids=["a"], labels=["new"], metadata=[{"v": "2"}])
    assert client.get_collection("upsert").count == 1
    (item,) = client.get_items("upsert", ["a"], with_vectors=True)
    assert (item.label, item.metadata) == ("new", {"v": "2"})
    np.testing.assert_allclose(item.vector, vectors[1], atol=1e-6)
    assert client.search("upsert", vector=vectors[0], k=5)[0].id == "a"  # one hit, the new vector
    assert client.search("upsert", vector=vectors[1], k=5, metadata={"v": "1"}) == []  # the old metadata is gone
    assert [h.id for h in client.search("upsert", vector=vectors[1], k=5, metadata={"v": "2"})] == ["a"]
    client.remove("upsert", ["a"])
    assert client.search("upsert", vector=vectors[1], k=5, metadata={"v": "2"}) == []


def test_filters_select_by_label_and_metadata_and_never_return_fewer_than_k(client, filled):
    query = filled[17]
    for labels, metadata, selected in [
        (["bird"], None, COUNT // 3),  # 2000: searched exactly
        (["cat", "dog"], None, 2 * COUNT // 3),  # 4000: through the HNSW graph, restricted
        ((), {"shelf": ["3", "4", "5", "6", "7", "8", "9"]}, 7 * COUNT // 10),  # 4200: graph
        (["cat"], {"shelf": "4", "even": "true"}, COUNT // 30),
    ]:
        hits = client.search("shelves", vector=query, k=50, labels=labels, metadata=metadata)
        assert len(hits) == 50, (labels, metadata, selected)
        for hit in hits:
            assert not labels or hit.label in labels
            for key, wanted in (metadata or {}).items():
                assert hit.metadata[key] in ([wanted] if isinstance(wanted, str) else wanted)
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
    few = client.search("shelves", vector=query, k=50, labels=["cat"], metadata={"shelf": "4", "even": "false"})
    assert few == []  # cat items are i % 3 == 0 and shelf 4 means i % 10 == 4: even, so none is odd


def test_a_filtered_search_is_exact_when_the_filter_selects_few(client, filled):
    query = filled[100]
    birds = [i for i in range(COUNT) if i % 3 == 2]
    exact = sorted(birds, key=lambda i: -float(filled[i] @ query))[:10]
    hits = client.search("shelves", vector=query, k=10, labels=["bird"])
    assert [h.id for h in hits] == [f"item{i:05d}" for i in exact]


def test_min_score_drops_weak_hits(client, filled):
    hits = client.search("shelves", vector=filled[5], k=100, min_score=0.8)
    assert hits and hits[0].id == "item00005" and all(h.score >= 0.8 for h in hits)
    assert len(hits) < 100  # 16-d random directions: few lie within 37 degrees of the query


def test_get_items_with_and_without_vectors(client, filled):
    items = client.get_items("shelves", ["item00002", "missing", "item00001"])
    assert [(i.id, i.label, i.vector) for i in items] == [("item00002", "bird", None), ("item00001", "dog", None)]
    response = client.stubs["index"].GetItems(
        index_pb2.GetItemsRequest(collection="shelves", ids=["item00001", "missing"], with_vectors=True)
    )
    assert list(response.not_found) == ["missing"]
    np.testing.assert_allclose(response.items[0].vector.values, filled[1], atol=1e-6)


def test_list_items_pages_through_every_selected_item_once(client, filled):
    ids = [item.id for item in client.iter_items("shelves", labels=["dog"], page_size=333)]
    assert ids == sorted(f"item{i:05d}" for i in range(COUNT) if i % 3 == 1)
    items, token = client.list_items_page("shelves", page_size=2)
    assert [i.id for i in items] == ["item00000", "item00001"] and token
    items, _ = client.list_items_page("shelves", page_token=token, page_size=1)
    assert [i.id for i in items] == ["item00002"]
    with pytest.raises(InvalidArgument, match="another filter"):
        client.list_items_page("shelves", page_token=token, labels=["dog"])
    with pytest.raises(InvalidArgument, match="malformed"):
        client.list_items_page("shelves", page_token="not-a-token")
    with pytest.raises(InvalidArgument, match="page_size"):
        client.list_items_page("shelves", page_size=1001)


def test_bad_filters_and_removes_are_invalid_arguments(client, filled):
    with pytest.raises(InvalidArgument, match="no item of collection 'shelves' has; its keys: even, shelf"):
        client.search("shelves", vector=filled[0], k=3, metadata={"colour": "red"})
    with pytest.raises(InvalidArgument, match="needs 1 to 100 values"):
        client.search("shelves", vector=filled[0], k=3, metadata={"shelf": []})
    with pytest.raises(InvalidArgument, match="one of the two"):
        client.remove("shelves", ids=["item00001"], labels=["dog"])
    with pytest.raises(InvalidArgument, match="one of the two"):
        client.remove("shelves")
    client.create_collection("euclid", model=f"random-projection-{DIM}", metric="l2")
    client.add("euclid", vectors=filled[:3])
    with pytest.raises(InvalidArgument, match="min_score applies to inner-product"):
        client.search("euclid", vector=filled[0], k=3, min_score=0.1)


def test_remove_by_filter(client, filled):
    vectors = unit_vectors(30, seed=4)
    client.create_collection("prune", model=f"random-projection-{DIM}")
    client.add(
        "prune", vectors=vectors, labels=["keep", "drop", "drop"] * 10, metadata=[{"n": str(i)} for i in range(30)]
    )
    response = client.remove("prune", labels=["drop"], metadata={"n": [str(i) for i in range(10)]})
    assert (response.removed, response.count) == (6, 24)
    assert {i.label for i in client.iter_items("prune")} == {"keep", "drop"}
    assert client.remove("prune", labels=["drop"]).removed == 14
    assert {i.label for i in client.iter_items("prune")} == {"keep"}


def test_writes_after_the_saved_index_are_replayed_and_a_bad_index_file_is_rebuilt(repo, tmp_path):
    """The index file is saved at a clean stop; writes after it are in SQLite only when the server is
    killed, and the next start adds just those. A damaged index file is rebuilt from SQLite."""
    vectors = unit_vectors(60, seed=5)
    settings = {"drain_seconds": 0, "index_save_seconds": 3600}  # never saved in the background here
    server = ServerProcess(repo, tmp_path, **settings)
    try:
        server.wait_serving()
        with Client(server.address) as client:
            client.create_collection("replay", model=f"random-projection-{DIM}", index_type="hnsw")
            client.add("replay", vectors=vectors[:50], ids=[f"v{i}" for i in range(50)])
        assert server.terminate() == 0  # a clean stop saves the index
    finally:
        server.kill()
    folder = tmp_path / "collections" / "replay"
    assert [p.name for p in folder.glob("index-*.faiss")] == ["index-1.faiss"]

    server = ServerProcess(repo, tmp_path, **settings)
    try:
        server.wait_serving()
        with Client(server.address) as client:
            client.add("replay", vectors=vectors[50:], ids=[f"v{i}" for i in range(50, 60)])
            client.remove("replay", ["v0"])
    finally:
        server.kill()  # kill -9: nothing saved since the restart

    server = ServerProcess(repo, tmp_path, **settings)
    try:
        server.wait_serving()
        restored = next(e for e in server.logs if e.get("message") == "collection restored")
        assert (restored["items"], restored["replayed"]) == (59, 10)
        with Client(server.address) as client:
            assert [client.search("replay", vector=vectors[i], k=1)[0].id for i in (3, 55)] == ["v3", "v55"]
            assert client.search("replay", vector=vectors[0], k=1)[0].id != "v0"
    finally:
        server.kill()

    (index_file,) = folder.glob("index-*.faiss")
    index_file.write_bytes(b"not a faiss index")
    server = ServerProcess(repo, tmp_path, **settings)
    try:
        server.wait_serving()
        assert any(e.get("message") == "unreadable index file: rebuilding it" for e in server.logs), [
            e.get("message") for e in server.logs
        ]
        with Client(server.address) as client:
            assert client.get_collection("replay").count == 59
            assert client.search("replay", vector=vectors[55], k=1)[0].id == "v55"
    finally:
        server.kill()


def test_a_damaged_database_is_a_startup_error_naming_the_file(repo, tmp_path):
    server = ServerProcess(repo, tmp_path, drain_seconds=0)
    try:
        server.wait_serving()
        with Client(server.address) as client:
            client.create_collection("fragile", model=f"random-projection-{DIM}")
            client.add("fragile", vectors=unit_vectors(500, seed=6))
        assert server.terminate() == 0
    finally:
        server.kill()
    database = tmp_path / "collections" / "fragile" / "items.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(database.read_bytes())
    data[4096 : 4096 + 2048] = b"\xff" * 2048  # the second page onwards: table contents
    database.write_bytes(bytes(data))
    server = ServerProcess(repo, tmp_path, drain_seconds=0)
    try:
        assert server.process.wait(60) == 1
        error = next(e for e in server.logs if e["level"] == "error")["error"]
        assert str(database) in error and "backup" in error
    finally:
        server.kill()


def test_unknown_rpc_fields_are_never_unknown_status(client, filled):
    """Every refusal of the new RPCs is a precise status."""
    stub = client.stubs["index"]
    for call, request in [
        (stub.GetItems, index_pb2.GetItemsRequest(collection="shelves")),
        (stub.GetItems, index_pb2.GetItemsRequest(collection="nope", ids=["a"])),
        (stub.ListItems, index_pb2.ListItemsRequest(collection="shelves", page_size=-1)),
        (stub.Remove, index_pb2.RemoveRequest(collection="shelves", filter=index_pb2.Filter(labels=["x"] * 101))),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


def test_a_collection_of_the_previous_format_is_migrated_at_start(repo, tmp_path):
    """tests/fixtures/old-format was written by the previous code (snapshot + write-ahead log, the last two
    writes only in the log, as after a crash): ten photos with these vectors, photo1 replaced by photo0's
    vector, photo3 removed."""
    shutil.copytree(ROOT / "tests" / "fixtures" / "old-format" / "collections", tmp_path / "collections")
    vectors = np.random.default_rng(0).standard_normal((10, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    server = ServerProcess(repo, tmp_path, drain_seconds=0)
    try:
        server.wait_serving()
        with Client(server.address) as client:
            assert client.get_collection("objects").count == 9
            items = {item.id: item for item in client.iter_items("objects", with_vectors=True)}
            assert sorted(items) == sorted(f"photo{i}" for i in range(10) if i != 3)
            assert (items["photo1"].label, items["photo1"].metadata) == ("replaced", {"n": "1b"})
            np.testing.assert_allclose(items["photo1"].vector, vectors[0], atol=1e-6)
            assert (items["photo8"].label, items["photo8"].metadata) == ("even", {"n": "8"})
            assert client.search("objects", vector=vectors[7], k=1)[0].id == "photo7"
    finally:
        server.kill()
    assert sorted(p.name for p in (tmp_path / "collections" / "objects").glob("*.json")) == []


def test_query_expansion_pulls_the_ranking_towards_what_the_best_hits_agree_on(client):
    def unit(*values: float) -> np.ndarray:
        vector = np.zeros(DIM, np.float32)
        vector[: len(values)] = values
        return vector / np.linalg.norm(vector)

    client.create_collection("expanded", model=f"random-projection-{DIM}")
    # a is the query's best hit; b looks like a, c like the query alone
    client.add("expanded", vectors=[unit(1, 0.5), unit(0.7, 1), unit(1, 0, 1.2)], ids=["a", "b", "c"])
    query = unit(1)
    assert [h.id for h in client.search("expanded", vector=query, k=3)] == ["a", "c", "b"]
    expanded = client.search("expanded", vector=query, k=3, query_expansion=1)
    assert [h.id for h in expanded] == ["a", "b", "c"]
    assert [h.id for h in client.search_batch("expanded", vectors=[query], k=3, query_expansion=1)[0]] == [
        "a",
        "b",
        "c",
    ]
    for bad, message in [
        ({"query_expansion": 51}, "query_expansion=51: 0 (none) to 50 hits"),
        ({"query_expansion": 1, "qe_alpha": -1.0}, "qe_alpha=-1.0: 0 to 100"),
    ]:
        with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
            client.search("expanded", vector=query, k=3, **bad)
    client.create_collection("distances", model=f"random-projection-{DIM}", metric="l2")
    client.add("distances", vectors=[query], ids=["q"])
    with pytest.raises(InvalidArgument, match="query expansion weights hits by similarity"):
        client.search("distances", vector=query, k=1, query_expansion=1)


def test_database_side_augmentation_blends_each_vector_with_its_nearest(client):
    rng = np.random.default_rng(11)
    vectors = unit_vectors(3, seed=12)
    vectors[1] = vectors[0] + 0.3 * rng.standard_normal(DIM).astype(np.float32)  # b is a's near twin
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    client.create_collection("augmented", model=f"random-projection-{DIM}")
    client.add("augmented", vectors=vectors, ids=["a", "b", "c"], labels=["x", "y", "z"], metadata=[{"k": "1"}, {}, {}])
    info = client.augment_database("augmented", neighbours=1)
    assert info.count == 3
    items = {item.id: item for item in client.get_items("augmented", ["a", "b", "c"], with_vectors=True)}
    similarity = float(vectors[0] @ vectors[1])
    expected = vectors[0] + max(similarity, 0) ** 3 * vectors[1]  # a's nearest other item is b
    np.testing.assert_allclose(items["a"].vector, expected / np.linalg.norm(expected), atol=1e-5)
    assert (items["a"].label, items["a"].metadata) == ("x", {"k": "1"})
    assert [h.id for h in client.search("augmented", id="a", k=2)] == ["a", "b"]
    with pytest.raises(InvalidArgument, match="neighbours=0: 1 to 50"):
        client.augment_database("augmented", neighbours=0)
    client.create_collection("augmented-l2", model=f"random-projection-{DIM}", metric="l2")
    with pytest.raises(InvalidArgument, match="it needs an inner-product collection"):
        client.augment_database("augmented-l2")
