"""Two offshelf replicas (their own ports and data folders) on one real Milvus: collections, items and heads written
through one are served by the other; a head trains on one replica at a time."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import grpc
import numpy as np
import pytest

from offshelf.clients import Client

from common import ServerProcess, clustered_vectors, skimage_photo, until

TINY = "random-projection-1280"
SYNC_SECONDS = 0.5


@pytest.fixture(scope="module")
def replica_servers(tiny_repo, milvus, tmp_path_factory):
    servers = [
        ServerProcess(
            tiny_repo,
            tmp_path_factory.mktemp(f"replica-{name}"),
            milvus_uri=milvus.uri,
            milvus_etcd_uri=milvus.etcd_uri,
            heads_sync_seconds=SYNC_SECONDS,
            drain_seconds=0,
        )
        for name in "ab"
    ]
    try:
        for server in servers:
            server.wait_serving()
        yield servers
    finally:
        for server in servers:
            server.kill()


@pytest.fixture(scope="module")
def replicas(replica_servers):
    with Client(replica_servers[0].address, timeout=60) as a, Client(replica_servers[1].address, timeout=60) as b:
        yield a, b


def eventually(check):
    """check()'s first true value, within what the other replica takes to catch up."""
    return until(check, 10 * SYNC_SECONDS + 10, "the other replica catching up")


def test_an_add_through_one_replica_is_found_by_a_search_through_the_other(replicas):
    a, b = replicas
    name = f"shared-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(50, 1280, seed=3)
    a.create_collection(name, model=TINY, index_type="hnsw")
    assert name in [c.name for c in b.list_collections()]
    a.add(name, vectors=vectors, ids=[f"i{i}" for i in range(50)], labels=["x"] * 50)
    # Strong consistency: the very next search through the other replica sees the acknowledged write
    assert b.search(name, vector=vectors[17], k=1)[0].id == "i17"
    assert b.get_collection(name).count == 50
    b.remove(name, ["i17"])
    assert a.search(name, vector=vectors[17], k=1)[0].id != "i17"
    b.delete_collection(name)
    with pytest.raises(grpc.RpcError) as gone:
        a.get_collection(name)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_whitening_through_one_replica_moves_the_others_to_the_whitened_index(replicas):
    a, b = replicas
    name = f"whitened-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(300, 1280, seed=6)
    a.create_collection(name, model=TINY, index_type="hnsw")
    a.add(name, vectors=vectors[:200], ids=[f"w{i}" for i in range(200)])
    assert b.search(name, vector=vectors[5], k=1)[0].id == "w5"  # b holds the unwhitened table now
    assert a.train_whitening(name, dim=48).whitening_dim == 48
    b.add(name, vectors=vectors[200:], ids=[f"w{i}" for i in range(200, 300)])  # whitened, though b had not looked
    assert b.get_collection(name).whitening_dim == 48 and a.get_collection(name).count == 300
    for i in (5, 150, 250):
        assert a.search(name, vector=vectors[i], k=1)[0].id == b.search(name, id=f"w{i}", k=1)[0].id == f"w{i}"
    (item,) = a.get_items(name, ["w250"], with_vectors=True)
    np.testing.assert_allclose(item.vector, vectors[250] / np.linalg.norm(vectors[250]), atol=1e-6)
    b.delete_collection(name)


def test_writes_through_another_replica_while_whitening_are_refused_or_kept_never_lost(replicas):
    a, b = replicas
    name = f"busy-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(1000, 1280, seed=7)
    a.create_collection(name, model=TINY)
    a.add(name, vectors=vectors[:600], ids=[f"b{i}" for i in range(600)])
    whitening = threading.Thread(target=a.train_whitening, args=(name, 64))
    whitening.start()
    acknowledged, refused = [], 0
    for i in range(600, 1000):
        try:
            b.add(name, vectors=vectors[i : i + 1], ids=[f"b{i}"])
            acknowledged.append(f"b{i}")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "being re-indexed" in err.details()
            refused += 1
        if not whitening.is_alive() and i >= 620:
            break
    whitening.join()
    assert a.get_collection(name).whitening_dim == 64
    kept = {item.id for item in a.get_items(name, acknowledged)}
    assert kept == set(acknowledged), f"{len(set(acknowledged) - kept)} acknowledged writes lost ({refused} refused)"
    a.delete_collection(name)


def test_a_head_trained_through_one_replica_is_served_by_the_other_and_trains_once(replicas):
    a, b = replicas
    name, head = f"labelled-{uuid.uuid4().hex[:8]}", f"head-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(200, 1280, seed=4)
    a.create_collection(name, model=TINY)
    a.add(name, vectors=vectors, labels=[f"c{i % 4}" for i in range(200)])
    a.train_head(head, "logreg", collection=name)
    with pytest.raises(grpc.RpcError) as refused:  # the lease is held by a's job
        b.train_head(head, "logreg", collection=name)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already training on another replica" in refused.value.details()
    trained = a.wait_for_head(head)
    assert trained.card.version == 1

    photos = [skimage_photo(p) for p in ("chelsea.png", "coffee.png", "astronaut.png")]
    served_by_b = eventually(lambda: b.classify(photos, head, k=4))
    assert served_by_b == a.classify(photos, head, k=4)
    assert b.get_head(head).card.version == 1

    b.train_head(head, "logreg", collection=name)  # the lease was released: the next version trains on b
    assert b.wait_for_head(head).card.version == 2
    eventually(lambda: a.get_head(head).card.version == 2)

    a.delete_head(head)
    eventually(lambda: head not in [h.job.head for h in b.list_heads()])
    a.delete_collection(name)


def test_collection_copy_moves_an_embedded_collection_to_milvus_with_the_same_answers(
    tiny_server, replica_servers, replicas
):
    a, _ = replicas
    name = f"moving-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(1200, 1280, seed=5)
    with Client(tiny_server.address, timeout=60) as embedded:
        embedded.create_collection(name, model=TINY, index_type="hnsw", hnsw={"m": 16})
        embedded.add(name, vectors=vectors[:1000], ids=[f"m{i:04d}" for i in range(1000)], labels=["a", "b"] * 500)
        embedded.add(
            name,
            vectors=vectors[1000:],
            ids=[f"m{i:04d}" for i in range(1000, 1200)],
            metadata=[{"shelf": str(i % 5)} for i in range(200)],
        )
        copied = subprocess.run(
            [
                *(sys.executable, "-m", "offshelf.clients.cli", "collection", "copy", name),
                *("--server", tiny_server.address),
                *("--to", replica_servers[0].address, "--batch-size", "300", "--json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert copied.returncode == 0, copied.stderr
        info = a.get_collection(name)
        assert info.count == 1200 and info.index_type == "hnsw" and info.hnsw.m == 16
        assert info.binding == embedded.get_collection(name).binding
        assert list(a.iter_items(name, page_size=1000)) == list(embedded.iter_items(name, page_size=1000))
        for query in vectors[::100]:
            assert [h.id for h in a.search(name, vector=query, k=5)] == [
                h.id for h in embedded.search(name, vector=query, k=5)
            ]
        assert [h.id for h in a.search(name, vector=vectors[0], k=3, metadata={"shelf": "2"})] == [
            h.id for h in embedded.search(name, vector=vectors[0], k=3, metadata={"shelf": "2"})
        ]
        embedded.delete_collection(name)
    a.delete_collection(name)


def test_a_training_lease_is_kept_while_held_and_expires_when_its_holder_stops(milvus):
    from offshelf.service.heads.shared import EtcdLeases

    leases = EtcdLeases(milvus.etcd_uri, ttl=2)
    lease = leases.acquire("heads/lease-test/training", "replica-a")
    assert lease is not None
    time.sleep(5)  # more than twice the TTL: renewed in the background
    assert leases.acquire("heads/lease-test/training", "replica-b") is None
    lease._released.set()  # the holder stops renewing, as a killed replica would
    taken = until(lambda: leases.acquire("heads/lease-test/training", "replica-b"), 15, "the lease expiring")
    taken.release()
