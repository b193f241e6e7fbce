"""Shared fixtures: the default model exported once per run, real servers in subprocesses, real photos."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

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


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A model repository holding the embedded default, exported by the real export tool."""
    from offshelf.export.repository import default_check_images, write_model
    from offshelf.export.zoo import build

    repo = tmp_path_factory.mktemp("repo")
    write_model(
        build("efficientnet-lite0"),
        "efficientnet-lite0",
        repo,
        "efficientnet-lite0",
        default_check_images(),
        log=lambda _: None,
    )
    return repo


class ServerProcess:
    """``offshelf serve`` in a subprocess on 127.0.0.1 with free ports; its JSON log lines are collected."""

    def __init__(self, repo: pathlib.Path, data_dir: pathlib.Path | None = None, **settings: object):
        self.data_dir = data_dir or pathlib.Path(tempfile.mkdtemp(prefix="offshelf-data-"))
        settings = {"data_dir": self.data_dir, **settings}
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
def server(model_repo: pathlib.Path):
    """One serving process for the read-only integration tests."""
    proc = ServerProcess(model_repo, max_images_per_request=32, max_batch_size=8, max_batch_delay_ms=20)
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def client(server: ServerProcess):
    with Client(server.address) as c:
        yield c
