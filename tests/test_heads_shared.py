"""Heads shared through Milvus, under races: a replica asked for a head it has not synced yet looks it up in the
shared store (issue 23 item 15); a head deleted while its new version is uploaded ends the job quietly (item 10)."""

from __future__ import annotations

import time
import uuid

import pytest

from offshelf.clients import Client
from offshelf.protos.v1 import heads_pb2

from common import ServerProcess, clustered_vectors, skimage_photo

TINY = "random-projection-1280"


@pytest.fixture(scope="module")
def unsynced_replicas(tiny_repo, milvus, tmp_path_factory):
    """Two replicas whose heads sync never runs within a test (an hour): what B serves of A's heads, it looked up."""
    servers = [
        ServerProcess(
            tiny_repo,
            tmp_path_factory.mktemp(f"unsynced-{name}"),
            milvus_uri=milvus.uri,
            milvus_etcd_uri=milvus.etcd_uri,
            heads_sync_seconds=3600,
            drain_seconds=0,
        )
        for name in "ab"
    ]
    try:
        for server in servers:
            server.wait_serving()
        with Client(servers[0].address, timeout=60) as a, Client(servers[1].address, timeout=60) as b:
            yield servers, a, b
    finally:
        for server in servers:
            server.kill()


def labelled_collection(client: Client, classes: int = 4) -> str:
    name = f"labelled-{uuid.uuid4().hex[:8]}"
    client.create_collection(name, model=TINY)
    client.add(name, vectors=clustered_vectors(300, 1280, seed=8), labels=[f"c{i % classes}" for i in range(300)])
    return name


def test_a_head_trained_through_one_replica_classifies_through_the_other_at_once(unsynced_replicas):
    _, a, b = unsynced_replicas
    collection, head = labelled_collection(a), f"head-{uuid.uuid4().hex[:8]}"
    a.train_head(head, "ncm", collection=collection)
    a.wait_for_head(head)
    photos = [skimage_photo(p) for p in ("chelsea.png", "coffee.png")]
    assert b.classify(photos, head, k=2) == a.classify(photos, head, k=2)
    assert b.get_head(head).card.version == 1
    a.delete_head(head)
    a.delete_collection(collection)


def test_a_head_deleted_while_its_version_is_uploaded_logs_no_error(unsynced_replicas):
    """Before, each delete during the upload logged "head training failed" with a FileNotFoundError traceback."""
    servers, a, _ = unsynced_replicas
    collection = labelled_collection(a, classes=150)  # a head of 2 MB: an upload of many blobs, a wide window
    for _ in range(5):
        head = f"raced-{uuid.uuid4().hex[:8]}"
        a.train_head(head, "ncm", collection=collection)
        deadline = time.monotonic() + 60
        while (job := a.get_head(head).job).state == heads_pb2.JOB_STATE_QUEUED or job.progress < 0.95:
            assert job.state in (heads_pb2.JOB_STATE_QUEUED, heads_pb2.JOB_STATE_RUNNING), job
            assert time.monotonic() < deadline, "the job never reached its upload"
        a.delete_head(head)  # while it writes and uploads the new version, most times
    last = f"last-{uuid.uuid4().hex[:8]}"
    a.train_head(last, "ncm", collection=collection)
    a.wait_for_head(last)  # one trainer runs the jobs in turn: the raced ones have ended
    assert [e for e in servers[0].logs if e["level"] == "error" or "exception" in e] == []
    assert [h.job.head for h in a.list_heads() if h.job.head.startswith("raced-")] == []  # none came back
    a.delete_head(last)
    a.delete_collection(collection)
