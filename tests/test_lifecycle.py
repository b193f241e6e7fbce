"""Start-up, readiness and graceful shutdown of the real serving process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import grpc

from offshelf.clients import Client

from support import ServerProcess, shared_photos


def test_sigterm_turns_health_not_serving_finishes_in_flight_calls_and_exits(model_repo, tmp_path):
    proc = ServerProcess(model_repo, tmp_path, drain_seconds=2, max_batch_size=4, max_images_per_request=64)
    try:
        proc.wait_serving()
        photos = shared_photos("ukbench", 64)
        outcome: dict[str, object] = {}

        def long_call() -> None:
            with Client(proc.address, timeout=60) as client:
                outcome["shape"] = client.embed(photos, outputs=["embedding"])["embedding"].shape

        in_flight = threading.Thread(target=long_call)
        in_flight.start()
        time.sleep(0.3)
        proc.process.send_signal(15)
        statuses = []
        with Client(proc.address, timeout=2) as client:
            for _ in range(10):
                try:
                    statuses.append(client.health())
                except grpc.RpcError:
                    break
                time.sleep(0.1)
        in_flight.join(60)
        assert statuses and set(statuses) == {"NOT_SERVING"}
        assert outcome["shape"] == (64, 1280)
        assert proc.process.wait(30) == 0
        assert [e["message"] for e in proc.logs][-2:] == ["draining", "stopped"]
    finally:
        proc.kill()


def test_a_broken_model_keeps_the_server_from_becoming_ready(model_repo, tmp_path):
    broken = tmp_path / "repo"
    shutil.copytree(model_repo, broken)
    (broken / "efficientnet-lite0" / "1" / "card.json").write_text("{ not json")
    proc = ServerProcess(broken, tmp_path / "data")
    try:
        assert proc.process.wait(60) == 1
        error = next(e for e in proc.logs if e["level"] == "error")
        assert "unreadable card.json" in error["error"] and "re-export" in error["error"]
    finally:
        proc.kill()


def test_serving_never_imports_torch(model_repo, tmp_path):
    script = f"""
import sys
from offshelf.service.server import Server
from offshelf.service.settings import ServiceSettings
settings = ServiceSettings(repo={str(model_repo)!r}, data_dir={str(tmp_path)!r}, host="127.0.0.1", port=0,
                           metrics_port=0, drain_seconds=0)
server = Server(settings)
server.start()
server.load()
server.stop()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().replace("'", '"')) == []
