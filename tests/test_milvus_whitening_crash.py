"""A replica killed (kill -9) while whitening a collection on Milvus: another replica's writes resume once the
whitening's fence expires, with no operator, no acknowledged write lost, and whitening possible again."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import grpc
import pytest
from pymilvus import MilvusClient

from offshelf.clients import Client
from offshelf.service.index.milvus.collection import key

from common import ServerProcess, clustered_vectors, until

TINY = "random-projection-1280"
FENCE_SECONDS = 3.0


def replica(tiny_repo, milvus, folder) -> ServerProcess:
    return ServerProcess(
        tiny_repo,
        folder,
        milvus_uri=milvus.uri,
        milvus_etcd_uri=milvus.etcd_uri,
        milvus_whitening_fence_seconds=FENCE_SECONDS,
        drain_seconds=0,
    )


def whiten(client: Client, name: str) -> None:
    with contextlib.suppress(grpc.RpcError):  # the replica is killed under it
        client.train_whitening(name, dim=64)


def tables_of(milvus_client: MilvusClient, name: str) -> list[str]:
    return [t for t in milvus_client.list_collections() if key(name) in t]


@pytest.mark.timeout(300)
def test_a_replica_killed_while_whitening_leaves_writes_refused_only_until_its_fence_expires(
    tiny_repo, milvus, tmp_path
):
    a, b = replica(tiny_repo, milvus, tmp_path / "a"), replica(tiny_repo, milvus, tmp_path / "b")
    milvus_client = MilvusClient(uri=milvus.uri)
    try:
        a.wait_serving()
        b.wait_serving()
        name = f"crash-{uuid.uuid4().hex[:8]}"
        vectors = clustered_vectors(700, 1280, seed=9)
        with Client(a.address, timeout=60) as through_a, Client(b.address, timeout=60) as through_b:
            through_a.create_collection(name, model=TINY)
            through_a.add(name, vectors=vectors[:600], ids=[f"c{i}" for i in range(600)])
            threading.Thread(target=whiten, args=(through_a, name), daemon=True).start()
            until(
                lambda: any(t.startswith("offshelf_migrating_") for t in tables_of(milvus_client, name)),
                60,
                "the whitening never renamed the table",
            )
            a.process.kill()  # kill -9, mid-whitening
            killed_at = time.monotonic()

            def add_through_b() -> bool:
                try:
                    through_b.add(name, vectors=vectors[600:601], ids=["c600"])
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
                    return False
                return True

            until(add_through_b, FENCE_SECONDS + 20, "writes stayed refused after the whitening's fence expired")
            assert time.monotonic() - killed_at < FENCE_SECONDS + 10
            acknowledged = [f"c{i}" for i in range(601)]
            assert {item.id for item in through_b.get_items(name, acknowledged)} == set(acknowledged)
            assert tables_of(milvus_client, name) == [f"offshelf_table_{key(name)}_0"]  # the half-built one dropped

            assert through_b.train_whitening(name, dim=64).whitening_dim == 64
            through_b.add(name, vectors=vectors[601:], ids=[f"c{i}" for i in range(601, 700)])
            assert through_b.get_collection(name).count == 700
            assert through_b.search(name, vector=vectors[650], k=1)[0].id == "c650"
            (table,) = tables_of(milvus_client, name)
            assert table.startswith("offshelf_table_") and not table.endswith("_0")
            through_b.delete_collection(name)
    finally:
        milvus_client.close()
        a.kill()
        b.kill()
