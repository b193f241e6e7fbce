"""Collections survive restarts and kill -9: every acknowledged write is there, nothing of a refused or
unacknowledged one is half there. (Damaged files and the index's catch-up: test_store.py.)

The servers here load the tiny model (conftest's tiny_repo): SQLite and the FAISS indexes are the real ones,
and a server is ready in about a second."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np

from offshelf.clients import Client

from common import ServerProcess

DIM = 1280
MODEL = "random-projection-1280"


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def started(repo, data_dir, **settings) -> ServerProcess:
    proc = ServerProcess(repo, data_dir=data_dir, drain_seconds=0, **settings)
    proc.wait_serving()
    return proc


def test_a_restart_restores_every_collection(tiny_repo, tmp_path):
    vectors = unit_vectors(400, seed=1)
    proc = started(tiny_repo, tmp_path)
    try:
        with Client(proc.address) as client:
            client.create_collection("flat", model=MODEL)
            client.create_collection("graph", model=MODEL, index_type="hnsw", hnsw={"m": 16})
            client.create_collection(
                "pq", model=MODEL, index_type="ivfpq", metric="l2", ivfpq={"nlist": 4, "train_size": 256, "m": 16}
            )
            for name in ("flat", "graph", "pq"):
                client.add(
                    name,
                    vectors=vectors,
                    ids=[f"id{i}" for i in range(400)],
                    labels=[str(i % 7) for i in range(400)],
                    metadata=[{"i": str(i)} for i in range(400)],
                )
                client.remove(name, ["id0", "id1"])
            deadline = time.monotonic() + 120
            while not client.get_collection("pq").trained:
                assert time.monotonic() < deadline, "ivfpq was never trained"
                time.sleep(0.2)
            before = {
                name: [client.search(name, vector=vectors[i], k=5) for i in (2, 50, 399)]
                for name in ("flat", "graph", "pq")
            }
            infos = {c.name: c for c in client.list_collections()}
        assert proc.terminate() == 0
    finally:
        proc.kill()

    proc = started(tiny_repo, tmp_path)
    try:
        with Client(proc.address) as client:
            for name in ("flat", "graph", "pq"):
                info = client.get_collection(name)
                assert (info.count, info.index_type, info.trained) == (398, infos[name].index_type, infos[name].trained)
                assert [client.search(name, vector=vectors[i], k=5) for i in (2, 50, 399)] == before[name]
                assert client.search(name, id="id50", k=1)[0].metadata == {"i": "50"}
    finally:
        proc.kill()


def test_kill_9_during_8_concurrent_writers_for_10_rounds_loses_no_acknowledged_add(tiny_repo, tmp_path):
    """Each round: 8 writers add batches of 5 while the index is saved in the background, then kill -9. After every
    round, each acknowledged id is there once, and each batch is there whole or not at all."""
    acknowledged: set[str] = set()
    attempted: list[list[str]] = []
    for round_number in range(10):
        proc = started(tiny_repo, tmp_path, index_save_seconds=0.3)
        lock = threading.Lock()
        stop = threading.Event()
        in_round = [0]

        def writer(w: int, proc=proc, lock=lock, stop=stop, in_round=in_round, round_number=round_number) -> None:
            with Client(proc.address, timeout=60, retries=0) as client:
                for n in range(10_000):
                    ids = [f"r{round_number}-w{w}-{n}-{j}" for j in range(5)]
                    with lock:
                        if stop.is_set():
                            return
                        attempted.append(ids)
                    try:
                        client.add("crash", vectors=unit_vectors(5, seed=hash(ids[0]) % 2**32), ids=ids)
                    except grpc.RpcError:
                        return
                    with lock:
                        acknowledged.update(ids)
                        in_round[0] += 1

        try:
            if round_number == 0:
                with Client(proc.address) as client:
                    client.create_collection("crash", model=MODEL, index_type="hnsw")
            threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while in_round[0] < 40:
                assert time.monotonic() < deadline and any(t.is_alive() for t in threads), "the writers stalled"
                time.sleep(0.02)
            proc.process.kill()  # SIGKILL: no index save, no goodbye
            proc.process.wait()
            stop.set()
            for t in threads:
                t.join(60)
        finally:
            proc.kill()

    proc = started(tiny_repo, tmp_path)
    try:
        with Client(proc.address) as client:
            listed = [item.id for item in client.iter_items("crash", page_size=1000)]
            stored = set(listed)
            assert len(listed) == len(stored) == client.get_collection("crash").count
            assert acknowledged <= stored
            for ids in attempted:
                assert sum(i in stored for i in ids) in (0, 5), ids
            for item_id in sorted(acknowledged)[::97]:
                assert client.search("crash", id=item_id, k=1)[0].id == item_id
    finally:
        proc.kill()
