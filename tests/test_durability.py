"""Collections survive restarts and kill -9; torn or corrupt files are recovered or refused, never silent.

The servers here load the tiny model (conftest's tiny_repo): the collections, their log, snapshots and FAISS
indexes are the real ones, and a server is ready in about a second."""

from __future__ import annotations

import struct
import threading
import time

import grpc
import numpy as np

from offshelf.clients import Client

from support import ServerProcess

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


def test_every_acknowledged_add_survives_kill_9_during_8_concurrent_writers(tiny_repo, tmp_path):
    proc = started(tiny_repo, tmp_path, snapshot_every_writes=300)
    acknowledged: list[tuple[str, np.ndarray]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        with Client(proc.address, timeout=60) as client:
            for n in range(10_000):
                if stop.is_set():
                    return
                vectors = unit_vectors(5, seed=w * 100_000 + n)
                ids = [f"w{w}-{n}-{j}" for j in range(5)]
                try:
                    client.add("crash", vectors=vectors, ids=ids)
                except grpc.RpcError:
                    return
                with lock:
                    acknowledged.extend(zip(ids, vectors, strict=True))

    try:
        with Client(proc.address) as client:
            client.create_collection("crash", model=MODEL)
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        while len(acknowledged) < 1500:
            assert any(t.is_alive() for t in threads), "every writer stopped before 1500 adds were acknowledged"
            time.sleep(0.05)
        proc.process.kill()  # SIGKILL: no snapshot, no flush, no goodbye
        proc.process.wait()
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        proc.kill()

    proc = started(tiny_repo, tmp_path)
    try:
        with Client(proc.address) as client:
            assert client.get_collection("crash").count >= len(acknowledged)
            ids = [item_id for item_id, _ in acknowledged]
            for start in range(0, len(ids), 1000):  # every acknowledged item is found, as its own nearest
                rows = client.search_batch("crash", ids=ids[start : start + 1000], k=1)
                assert [top.id for (top,) in rows] == ids[start : start + 1000]
            for item_id, vector in acknowledged[::50]:
                assert client.search("crash", vector=vector, k=1)[0].id == item_id
    finally:
        proc.kill()


def test_a_torn_log_tail_is_discarded_and_everything_acknowledged_is_kept(tiny_repo, tmp_path):
    proc = started(tiny_repo, tmp_path)
    try:
        with Client(proc.address) as client:
            client.create_collection("torn", model=MODEL)
            ids = client.add("torn", vectors=unit_vectors(10, seed=2))
        proc.process.kill()
        proc.process.wait()
    finally:
        proc.kill()
    wal = tmp_path / "collections" / "torn" / "wal.log"
    intact = wal.stat().st_size
    with wal.open("ab") as f:
        f.write(struct.pack("<II", 5000, 1234) + b"half a record")  # a write cut short by the crash

    proc = started(tiny_repo, tmp_path)
    try:
        with Client(proc.address) as client:
            assert client.get_collection("torn").count == 10
            assert client.search("torn", id=ids[9], k=1)[0].id == ids[9]
        assert wal.stat().st_size == intact
        assert any("torn tail" in e["message"] for e in proc.logs)
    finally:
        proc.kill()


def _refused_start(repo, data_dir) -> str:
    proc = ServerProcess(repo, data_dir=data_dir, drain_seconds=0)
    try:
        assert proc.process.wait(60) == 1
        return next(e["error"] for e in proc.logs if e["level"] == "error")
    finally:
        proc.kill()


def test_corruption_inside_the_log_refuses_readiness(tiny_repo, tmp_path):
    proc = started(tiny_repo, tmp_path)
    try:
        with Client(proc.address) as client:
            client.create_collection("bitrot", model=MODEL)
            client.add("bitrot", vectors=unit_vectors(3, seed=3))
            client.add("bitrot", vectors=unit_vectors(3, seed=4))
        proc.process.kill()
        proc.process.wait()
    finally:
        proc.kill()
    wal = tmp_path / "collections" / "bitrot" / "wal.log"
    data = bytearray(wal.read_bytes())
    data[40] ^= 0xFF  # inside the first of two records
    wal.write_bytes(bytes(data))
    error = _refused_start(tiny_repo, tmp_path)
    assert "fails its checksum" in error and "corrupt" in error


def test_a_truncated_snapshot_refuses_readiness(tiny_repo, tmp_path):
    proc = started(tiny_repo, tmp_path)
    try:
        with Client(proc.address) as client:
            client.create_collection("halved", model=MODEL)
            client.add("halved", vectors=unit_vectors(50, seed=5))
        assert proc.terminate() == 0  # a clean stop writes a snapshot and empties the log
    finally:
        proc.kill()
    snapshot = tmp_path / "collections" / "halved" / "snapshot.npz"
    snapshot.write_bytes(snapshot.read_bytes()[: snapshot.stat().st_size // 2])
    error = _refused_start(tiny_repo, tmp_path)
    assert "snapshot.npz is corrupt or truncated" in error
