"""The store on Milvus under faults: a Milvus of these tests' own, killed with SIGKILL and started again on the same
ports, so that the suite's shared Milvus is unaffected. It comes back with empty data: Milvus 2.3.5 reopening its
own data after a SIGKILL can take minutes (its embedded etcd waits out the dead process's leases)."""

from __future__ import annotations

import shutil
import time
import uuid

import grpc
import pytest

from offshelf.clients import Client

from common import MilvusProcess, ServerProcess, clustered_vectors, skimage_photo, until

TINY = "random-projection-1280"
INDEX = "offshelf.v1.Index"


def restart_empty(milvus: MilvusProcess) -> None:
    """Starts the killed Milvus again on the same ports, its data (etcd's included) gone."""
    for path in milvus.log.parent.iterdir():
        if path not in (milvus.log, milvus.etcd_config):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    milvus.start()
    milvus.wait_ready()


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), refused.value.details()


@pytest.fixture(scope="module")
def own_milvus(tmp_path_factory):
    proc = MilvusProcess(tmp_path_factory.mktemp("faulty-milvus"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def replica(tiny_repo, own_milvus, tmp_path_factory):
    server = ServerProcess(
        tiny_repo,
        tmp_path_factory.mktemp("faulty-replica"),
        milvus_uri=own_milvus.uri,
        milvus_etcd_uri=own_milvus.etcd_uri,
        heads_sync_seconds=0.2,
        drain_seconds=0,
    )
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()


def test_milvus_down_is_unavailable_on_every_call_and_index_health_not_serving_until_it_is_back(replica, own_milvus):
    name = f"outage-{uuid.uuid4().hex[:8]}"
    vectors = clustered_vectors(20, 1280, seed=1)
    with Client(replica.address, timeout=30) as client:
        client.create_collection(name, model=TINY)
        client.add(name, vectors=vectors, ids=[f"o{i}" for i in range(20)])
        assert client.health(INDEX) == "SERVING"

        own_milvus.kill()
        killed_at = len(replica.logs)
        until(lambda: client.health(INDEX) == "NOT_SERVING", what="index health NOT_SERVING")
        calls = {
            "Search": lambda: client.search(name, vector=vectors[0], k=3),
            "Add": lambda: client.add(name, vectors=vectors[:1], ids=["new"]),
            "GetCollection": lambda: client.get_collection(name),
            "ListCollections": lambda: client.list_collections(),
            "GetItems": lambda: client.get_items(name, ["o1"]),
            "Remove": lambda: client.remove(name, ["o1"]),
            "CreateCollection": lambda: client.create_collection(f"{name}-2", model=TINY),
            "DeleteCollection": lambda: client.delete_collection(name),
        }
        for rpc, call in calls.items():
            code, details = code_of(call)
            assert code == grpc.StatusCode.UNAVAILABLE, f"{rpc}: {code} {details}"
            assert f"Milvus does not answer at {own_milvus.uri}" in details and "retry" in details, details
        assert client.health() == "SERVING" and client.health("offshelf.v1.Embedding") == "SERVING"
        assert len(client.embed([skimage_photo("coffee.png")], TINY)) == 1  # embeddings go on
        time.sleep(2)  # ten heads-sync periods and many calls: still one line about the outage
        during = replica.logs[killed_at:]
        assert not [e for e in during if "exception" in e], [e["message"] for e in during if "exception" in e]
        assert [e["message"] for e in during if e["level"] in ("warning", "error")] == ["Milvus does not answer"]

        restart_empty(own_milvus)
        until(lambda: client.health(INDEX) == "SERVING", timeout=30, what="index health SERVING again")
        client.create_collection(name, model=TINY)
        client.add(name, vectors=vectors, ids=[f"o{i}" for i in range(20)])
        assert client.search(name, vector=vectors[0], k=1)[0].id == "o0"
        # The server logs the line before its health turns SERVING; the test's log reader may read it later.
        until(lambda: any(e["message"] == "Milvus answers again" for e in replica.logs[killed_at:]), what="the log")
        after = replica.logs[killed_at:]
        assert [e["message"] for e in after if e["message"].startswith("Milvus")] == [
            "Milvus does not answer",
            "Milvus answers again",
        ]
