"""Shared fixtures: the default model exported once per run, real servers in subprocesses. Helpers that
benchmarks use too live in bench/common.py.

`make test` runs the suite in pytest-xdist workers: what is made once per run (the export, the tritonclient venv,
Debian's prometheus and chromium) is made under a file lock in the run's shared temp folder, and every test that uses
the shared Milvus standalone runs in one worker (the `milvus` xdist group), so one Milvus serves them all."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import filelock
import grpc
import numpy as np
import pytest

from offshelf.clients import Client

from common import ROOT, MilvusProcess, ServerProcess, shared_photos, write_identity_model


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the shared Milvus standalone go to one xdist worker (with --dist loadgroup), which starts it once."""
    for item in items:
        if "milvus" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("milvus"))


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> pathlib.Path:
    """A folder every xdist worker of this run shares (the worker's own temp folder when not distributed)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def model_repo(run_folder: pathlib.Path) -> pathlib.Path:
    """A model repository holding the embedded default, exported by the real export tool once per run."""
    from offshelf.export.repository import ExportRequest, export_model
    from offshelf.export.zoo import build_network

    repo = run_folder / "repo"
    with filelock.FileLock(run_folder / "repo.lock"):
        if not (run_folder / "repo.done").exists():
            shutil.rmtree(repo, ignore_errors=True)
            repo.mkdir()
            network = build_network("efficientnet-lite0")
            export_model(ExportRequest(network, repo, "efficientnet-lite0"), log=lambda _: None)
            (run_folder / "repo.done").touch()
    return repo


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A model repository holding one tiny ONNX model (random projection of an 8x8 crop to 1280-d, see bench/common.py):
    a server on it is ready in about a second, for tests of collections, durability and the process itself."""
    return write_identity_model(tmp_path_factory.mktemp("tiny-repo"), 1280)


@pytest.fixture(scope="session")
def tiny_server(tiny_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory):
    """A serving process on the tiny model, for tests that need collections but not real embeddings."""
    proc = ServerProcess(tiny_repo, tmp_path_factory.mktemp("tiny-data"), drain_seconds=0)
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.kill()


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


@pytest.fixture(scope="session")
def milvus(tmp_path_factory: pytest.TempPathFactory):
    """A real Milvus standalone server, shared by every test that runs a backend on Milvus."""
    proc = MilvusProcess(tmp_path_factory.mktemp("milvus"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def milvus_server(model_repo: pathlib.Path, milvus: MilvusProcess, tmp_path_factory: pytest.TempPathFactory):
    """The shared serving process of `server`, with its collections on Milvus."""
    proc = ServerProcess(
        model_repo,
        tmp_path_factory.mktemp("milvus-data"),
        max_images_per_request=32,
        max_batch_size=8,
        max_batch_delay_ms=20,
        milvus_uri=milvus.uri,
        milvus_etcd_uri=milvus.etcd_uri,
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
    server = ServerProcess(
        model_repo,
        tmp_path_factory.mktemp("metrics"),
        drain_seconds=0,
        index_save_seconds=0.2,
        metrics_collection_labels=True,
    )
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
            client.add_images("objects", photos, labels=labels, batch_size=16, progress=False)  # two Adds: 16, 8
            client.add("objects", vectors=[np.ones(1280)], ids=["a-vector"])
            client.train_head("objects-head", "ncm", collection="objects")
            client.wait_for_head("objects-head")
            client.search_batch("objects", images=photos[:8], k=4)
            client.classify(photos[:8], "objects-head")
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def prometheus_tools(run_folder: pathlib.Path) -> tuple[str, str]:
    """(prometheus, promtool) from Debian's package, installed here when missing."""
    with filelock.FileLock(run_folder / "apt.lock"):
        prometheus, promtool = debian_binaries("prometheus", "prometheus", "promtool")
    return prometheus, promtool


@pytest.fixture(scope="session")
def chromium(run_folder: pathlib.Path) -> str:
    """Debian's chromium (Playwright's own browser download needs the internet), installed here when missing."""
    with filelock.FileLock(run_folder / "apt.lock"):
        (path,) = debian_binaries("chromium", "chromium")
    return path


def debian_binaries(package: str, *binaries: str) -> list[str]:
    """The paths of `binaries`, installing Debian's `package` first when one is missing (skips where it cannot)."""
    if not all(shutil.which(b) for b in binaries):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip(f"{package} is not installed and apt-get cannot install it here (needs root and apt)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        ):
            if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode != 0:
                pytest.skip(f"could not install Debian's {package} package ({' '.join(command)} failed)")
    return [str(shutil.which(b)) for b in binaries]


@pytest.fixture(scope="session")
def tritonclient_python() -> str:
    """A virtualenv of its own with the stock tritonclient[grpc,http] (it pins protobuf < 7; offshelf needs 7)."""
    venv = ROOT / "build" / "tritonclient-venv"
    python = venv / "bin" / "python"
    venv.parent.mkdir(exist_ok=True)
    with filelock.FileLock(venv.parent / "tritonclient-venv.lock"):
        if not (venv / ".installed-grpc-http").exists():
            make_tritonclient_venv(venv)
    return str(python)


def make_tritonclient_venv(venv: pathlib.Path) -> None:
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "tritonclient[grpc,http]>=2.50", "numpy"], check=True, timeout=600
    )
    (venv / ".installed-grpc-http").touch()
