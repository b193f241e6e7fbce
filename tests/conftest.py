"""Shared fixtures: the default model exported once per run, real servers in subprocesses, real photos."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from offshelf.clients import Client

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = pathlib.Path(os.environ.get("OFFSHELF_DATA", ROOT.parent / "shared" / "data"))


def skimage_photo(name: str) -> pathlib.Path:
    import skimage

    return pathlib.Path(skimage.__file__).parent / "data" / name


def shared_photos(folder: str, count: int) -> list[pathlib.Path]:
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"{path} is absent: real photos come from ../shared/data (or set OFFSHELF_DATA)")
    return sorted(path.rglob("*.jpg"))[:count]


def clustered_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    """Vectors near a 64-d subspace, in 50 clusters, plus isotropic noise: the shape of CNN embeddings."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((64, dim)).astype(np.float32)
    centres = 2 * rng.standard_normal((50, 64)).astype(np.float32)
    latent = centres[rng.integers(0, 50, count)] + rng.standard_normal((count, 64)).astype(np.float32)
    vectors = latent @ basis
    noise = rng.standard_normal((count, dim)).astype(np.float32)
    scale = 0.3 * float(np.linalg.norm(vectors, axis=1).mean()) / dim**0.5
    return (vectors + scale * noise).astype(np.float32)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A model repository holding the embedded default, exported by the real export tool."""
    from offshelf.export.repository import ExportRequest, export_model
    from offshelf.export.zoo import build_network

    repo = tmp_path_factory.mktemp("repo")
    export_model(ExportRequest(build_network("efficientnet-lite0"), repo, "efficientnet-lite0"), log=lambda _: None)
    return repo


class ServerProcess:
    """``offshelf serve`` in a subprocess on 127.0.0.1 with free ports; its JSON log lines are collected."""

    def __init__(self, repo: pathlib.Path, data_dir: pathlib.Path, **settings: object):
        self.data_dir = data_dir
        settings = {"data_dir": data_dir, **settings}
        env = {**os.environ, **{f"OFFSHELF_{k.upper()}": str(v) for k, v in settings.items()}}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "offshelf.service.cli",
                "--repo",
                str(repo),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-port",
                "0",
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.logs: list[dict] = []
        self._listening = threading.Event()
        threading.Thread(target=self._read_logs, daemon=True).start()
        if not self._listening.wait(60):
            self.kill()
            raise RuntimeError(f"server did not start listening: {self.logs}")
        started = next(e for e in self.logs if e.get("message") == "listening")
        self.address = f"127.0.0.1:{started['grpc_port']}"
        self.metrics_url = f"http://127.0.0.1:{started['metrics_port']}/metrics"

    def _read_logs(self) -> None:
        for line in self.process.stderr:
            if line.startswith("{"):
                entry = json.loads(line)
                self.logs.append(entry)
                if entry.get("message") == "listening":
                    self._listening.set()

    def wait_serving(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}: {self.logs}")
                try:
                    if client.health() == "SERVING":
                        return
                except Exception:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"server not SERVING after {timeout} s: {self.logs}")

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def server(model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory):
    """One serving process shared by the integration tests."""
    proc = ServerProcess(
        model_repo, tmp_path_factory.mktemp("data"), max_images_per_request=32, max_batch_size=8, max_batch_delay_ms=20
    )
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def client(server: ServerProcess):
    with Client(server.address) as c:
        yield c


@pytest.fixture(scope="session")
def traffic(model_repo, tmp_path_factory):
    """A server of its own that has seen a known amount of traffic."""
    server = ServerProcess(model_repo, tmp_path_factory.mktemp("metrics"), drain_seconds=0, snapshot_every_writes=20)
    try:
        server.wait_serving()
        photos = shared_photos("ukbench", 24)
        with Client(server.address) as client:
            client.embed(photos[:3])
            for bad in (b"", b"not an image"):
                with pytest.raises(grpc.RpcError):
                    client.embed([bad])
            client.create_collection("objects", index_type="hnsw")
            labels = [str(i // 4) for i in range(len(photos))]
            client.add_images("objects", photos, labels=labels, batch_size=16, progress=False)  # 16, 8: a snapshot
            client.add("objects", vectors=[np.ones(1280)], ids=["after-the-snapshot"])  # one write in the log
            client.train_head("objects-head", "ncm", collection="objects")
            client.wait_for_head("objects-head")
            client.search_batch("objects", images=photos[:8], k=4)
            client.classify(photos[:8], "objects-head")
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def prometheus_tools() -> tuple[str, str]:
    """(prometheus, promtool) from Debian's package, installed here when missing."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("Prometheus is not installed and apt-get cannot install it here (needs root and apt)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        ):
            if subprocess.run(command, env=env, capture_output=True, timeout=600).returncode != 0:
                pytest.skip(f"could not install Debian's prometheus package ({' '.join(command)} failed)")
    return shutil.which("prometheus"), shutil.which("promtool")
