"""Admin operations racing each other (issue 14, section 4), on the embedded store: every answer is a status the
caller can act on, never INTERNAL, and a deleted head stays deleted."""

from __future__ import annotations

import threading
import time
import uuid

import grpc
import numpy as np
import pytest

from offshelf.clients import Client
from offshelf.protos.v1 import heads_pb2

from common import ServerProcess, clustered_vectors, until, write_identity_model

TINY = "random-projection-1280"


@pytest.fixture(scope="module")
def racing(tmp_path_factory):
    root = tmp_path_factory.mktemp("races")
    repo = write_identity_model(root / "repo", 1280)
    (root / "data" / "collections" / "orphan").mkdir(parents=True)  # a folder without a database: a crash's leftover
    server = ServerProcess(repo, root / "data", index_save_seconds=0.05, drain_seconds=0)
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()


def codes_of(address: str, calls, rounds: int) -> dict[str, int]:
    """Runs each call `rounds` times in its own thread; how often each status code came back."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def run(call, client):
        for _ in range(rounds):
            try:
                call(client)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            with lock:
                seen[code] = seen.get(code, 0) + 1

    clients = [Client(address, timeout=60, retries=0) for _ in calls]
    threads = [threading.Thread(target=run, args=(call, c)) for call, c in zip(calls, clients, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    return seen


def test_create_racing_delete_of_one_name_answers_only_what_a_caller_expects(racing):
    name = f"race-{uuid.uuid4().hex[:6]}"
    create = lambda c: c.create_collection(name, model=TINY)  # noqa: E731
    delete = lambda c: c.delete_collection(name)  # noqa: E731
    seen = codes_of(racing.address, [create, delete, create, delete], rounds=60)
    assert set(seen) <= {"OK", "ALREADY_EXISTS", "NOT_FOUND"}, seen


def test_listing_while_indexes_are_saved_never_fails(racing):
    name = f"saving-{uuid.uuid4().hex[:6]}"
    vectors = clustered_vectors(400, 1280, seed=8)
    with Client(racing.address, timeout=60) as client:
        client.create_collection(name, model=TINY)
        stop = threading.Event()

        def write():
            i = 0
            while not stop.is_set():  # every write makes the saver (every 50 ms) write a new index file
                client.add(name, vectors=vectors[i % 400 : i % 400 + 1], ids=[f"w{i}"])
                i += 1

        writer = threading.Thread(target=write)
        writer.start()
        try:
            calls = [lambda c: c.list_collections(), lambda c: c.get_collection(name)]
            seen = codes_of(racing.address, calls, rounds=150)
        finally:
            stop.set()
            writer.join()
        assert seen == {"OK": 300}, seen
        client.delete_collection(name)


def test_a_leftover_folder_without_a_database_does_not_block_its_name(racing):
    with Client(racing.address, timeout=60) as client:
        assert client.create_collection("orphan", model=TINY).name == "orphan"
        client.add("orphan", vectors=np.ones((1, 1280), np.float32))
        assert client.get_collection("orphan").count == 1
        client.delete_collection("orphan")
    assert list((racing.data_dir / "collections").glob(".orphaned-orphan-*"))  # moved aside, not deleted


def start_slow_training(client: Client, head: str) -> None:
    """A logistic regression over 2,000 vectors of 8 classes (seconds to tens of seconds on this machine), returned
    once the server reports it running."""
    client.create_collection("source", model=TINY)
    vectors = clustered_vectors(2000, 1280, seed=10)
    client.add("source", vectors=vectors[:1000], labels=[f"c{i % 8}" for i in range(1000)])
    client.add("source", vectors=vectors[1000:], labels=[f"c{i % 8}" for i in range(1000)])
    client.train_head(head, "logreg", collection="source")
    until(lambda: client.get_head(head).job.state == heads_pb2.JOB_STATE_RUNNING, 60, f"{head} training")


def test_a_head_deleted_while_it_trains_stays_deleted_after_a_restart(tmp_path):
    repo = write_identity_model(tmp_path / "repo", 1280)
    server = ServerProcess(repo, tmp_path / "data", drain_seconds=0)
    try:
        server.wait_serving()
        with Client(server.address, timeout=60) as client:
            start_slow_training(client, "doomed")
            client.delete_head("doomed")
            assert "doomed" not in [h.job.head for h in client.list_heads()]
    finally:
        assert server.terminate(timeout=120) == 0  # the job stops at its next step; the server waits for it
    restarted = ServerProcess(repo, tmp_path / "data", drain_seconds=0)
    try:
        restarted.wait_serving()
        with Client(restarted.address, timeout=60) as client:
            assert "doomed" not in [h.job.head for h in client.list_heads()]
    finally:
        restarted.kill()


def test_sigterm_while_a_head_trains_exits_within_drain_and_grace(tmp_path):
    repo = write_identity_model(tmp_path / "repo", 1280)
    server = ServerProcess(repo, tmp_path / "data", drain_seconds=0, grace_seconds=1)
    try:
        server.wait_serving()
        with Client(server.address, timeout=60) as client:
            start_slow_training(client, "slow")
        started = time.monotonic()
        assert server.terminate(timeout=120) == 0
        assert time.monotonic() - started < 1 + 10  # grace, plus closing the stores, with room for a slow box
    finally:
        server.kill()
