"""hnsw and ivfpq against exact flat search, through the service, on clustered vectors like embeddings (a server
on the tiny model: the vectors are given, so the network does not matter), on both stores."""

from __future__ import annotations

import time

import numpy as np
import pytest

from common import ServerProcess, clustered_vectors

DIM = 1280
TINY = "random-projection-1280"


def recall_at_10(client, name: str, truth: list[list[str]], queries: np.ndarray, **search) -> float:
    found = [[h.id for h in client.search(name, vector=q, k=10, **search)] for q in queries]
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))


@pytest.fixture(scope="module", params=["embedded", "milvus"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def server(request, backend, tiny_server, tiny_repo, tmp_path_factory):
    """The tiny server, or one of its own with collections on Milvus."""
    if backend == "embedded":
        yield tiny_server
        return
    milvus = request.getfixturevalue("milvus")
    proc = ServerProcess(tiny_repo, tmp_path_factory.mktemp("types-milvus"), milvus_uri=milvus.uri, drain_seconds=0)
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def loaded(server):
    from offshelf.clients import Client

    vectors = clustered_vectors(3000, DIM, seed=0)
    queries = vectors[::60] + 0.05 * clustered_vectors(50, DIM, seed=1)
    with Client(server.address, timeout=120) as client:
        client.create_collection("types-flat", model=TINY)
        client.create_collection("types-hnsw", model=TINY, index_type="hnsw", hnsw={"m": 16, "ef_construction": 100})
        client.create_collection("types-ivfpq", model=TINY, index_type="ivfpq", ivfpq={"nlist": 32, "train_size": 2000})
        for name in ("types-flat", "types-hnsw", "types-ivfpq"):
            for start in range(0, 1500, 500):
                client.add(name, vectors=vectors[start : start + 500], ids=[str(i) for i in range(start, start + 500)])
        yield client, vectors, queries
        for name in ("types-flat", "types-hnsw", "types-ivfpq"):
            client.delete_collection(name)


def fill_and_train(client, vectors, queries, backend: str) -> None:
    """Adds the second 1500 vectors (once) and waits until ivfpq has trained, searching meanwhile."""
    if client.get_collection("types-ivfpq").count == 3000:
        return
    for name in ("types-flat", "types-hnsw", "types-ivfpq"):
        for start in range(1500, 3000, 500):
            client.add(name, vectors=vectors[start : start + 500], ids=[str(i) for i in range(start, start + 500)])
    deadline = time.monotonic() + 120
    while not client.get_collection("types-ivfpq").trained and backend == "embedded":
        assert time.monotonic() < deadline, "ivfpq never trained"
        client.search("types-ivfpq", vector=queries[0], k=10)  # searches go on while it trains
        time.sleep(0.1)


def test_ivfpq_answers_exactly_until_trained_then_trains_in_the_background(loaded, backend):
    if backend == "milvus":
        pytest.skip("Milvus builds IVF_PQ per sealed segment on its own schedule; until then it searches exactly")
    client, vectors, queries = loaded
    if client.get_collection("types-ivfpq").count < 2000:
        assert not client.get_collection("types-ivfpq").trained  # below train_size
        for q in queries[:10]:
            assert client.search("types-ivfpq", vector=q, k=10) == client.search("types-flat", vector=q, k=10)
    fill_and_train(client, vectors, queries, backend)
    assert client.get_collection("types-ivfpq").trained
    assert client.get_collection("types-ivfpq").count == 3000


def test_hnsw_and_ivfpq_reach_recall_at_10_of_0_9_against_flat(loaded, backend):
    client, vectors, queries = loaded
    fill_and_train(client, vectors, queries, backend)
    truth = [[h.id for h in client.search("types-flat", vector=q, k=10)] for q in queries]
    assert recall_at_10(client, "types-hnsw", truth, queries) >= 0.9
    assert recall_at_10(client, "types-hnsw", truth, queries, ef_search=256) >= 0.9
    assert recall_at_10(client, "types-ivfpq", truth, queries) >= 0.9
    assert recall_at_10(client, "types-ivfpq", truth, queries, nprobe=32) >= 0.9


def test_removed_items_never_come_back_from_hnsw_or_ivfpq(loaded, backend):
    client, vectors, queries = loaded
    fill_and_train(client, vectors, queries, backend)
    for name in ("types-hnsw", "types-ivfpq"):
        assert client.search(name, vector=vectors[7], k=1)[0].id == "7"
        client.remove(name, ["7", "8"])
        assert {"7", "8"}.isdisjoint(h.id for h in client.search(name, vector=vectors[7], k=50))
        client.add(name, vectors=vectors[7:9], ids=["7", "8"])
        assert client.search(name, vector=vectors[7], k=1)[0].id == "7"
