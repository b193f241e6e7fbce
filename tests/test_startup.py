"""What keeps a server from starting is one StartupError: logged as one line naming the fix, exit code 1,
never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from common import ServerProcess, write_identity_model


def serve(
    repo, data_dir, port: int = 0, metrics_port: int = 0, host: str = "127.0.0.1", **settings: str
) -> subprocess.CompletedProcess:
    """Runs `offshelf serve` to its end (it is expected to fail to start); settings as OFFSHELF_* variables."""
    command = [sys.executable, "-m", "offshelf.service.cli", "--repo", str(repo), "--data-dir", str(data_dir)]
    command += ["--host", host, "--port", str(port), "--metrics-port", str(metrics_port)]
    env = {**os.environ, **{f"OFFSHELF_{key.upper()}": value for key, value in settings.items()}}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def the_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [json.loads(line) for line in result.stderr.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, result.stderr
    return errors[0]["error"]


def test_a_corrupt_head_card_is_a_startup_error(tmp_path):
    version = tmp_path / "data" / "heads" / "broken" / "1"
    version.mkdir(parents=True)
    (version / "card.json").write_text("{not json")
    error = the_error(serve(write_identity_model(tmp_path / "repo", 16), tmp_path / "data"))
    assert str(version) in error and "train the head again" in error


def test_a_taken_metrics_port_is_a_startup_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = the_error(serve(write_identity_model(tmp_path / "repo", 16), tmp_path / "data", metrics_port=port))
    assert f"127.0.0.1:{port}" in error and "--metrics-port" in error


@pytest.mark.parametrize("package", ["sklearn", "pymilvus"])
def test_starting_the_server_loads_neither_scikit_learn_nor_pymilvus(package):
    """scikit-learn takes most of a second to import and only fitting a head needs it; pymilvus half a second, an
    extra only OFFSHELF_MILVUS_URI needs."""
    script = f"import sys, offshelf.service.server; print(sorted(m for m in sys.modules if m.startswith({package!r})))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_second_server_on_the_same_data_folder_refuses_to_start(tmp_path):
    repo = write_identity_model(tmp_path / "repo", 16)
    first = ServerProcess(repo, tmp_path / "data", drain_seconds=0)
    try:
        first.wait_serving()
        error = the_error(serve(repo, tmp_path / "data"))
        assert f'"pid": {first.process.pid}' in error and "--data-dir" in error
    finally:
        first.kill()
    restarted = ServerProcess(repo, tmp_path / "data", drain_seconds=0)  # the lock died with its holder
    try:
        restarted.wait_serving()
    finally:
        restarted.kill()


def test_a_taken_grpc_port_is_a_startup_error(tmp_path):
    repo = write_identity_model(tmp_path / "repo", 16)
    first = ServerProcess(repo, tmp_path / "first", drain_seconds=0)
    try:
        port = int(first.address.rsplit(":", 1)[1])
        error = the_error(serve(repo, tmp_path / "second", port=port))
    finally:
        first.kill()
    assert f"127.0.0.1:{port}" in error and "--port" in error


def test_an_unreachable_milvus_is_a_startup_error_naming_the_setting(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        repo = write_identity_model(tmp_path / "repo", 16)
        result = serve(repo, tmp_path / "data", milvus_uri=f"http://127.0.0.1:{port}")
    error = the_error(result)
    assert f"cannot reach Milvus at http://127.0.0.1:{port}" in error and "OFFSHELF_MILVUS_URI" in error


def test_serving_beyond_loopback_without_tokens_is_refused_unless_insecure(tmp_path):
    repo = write_identity_model(tmp_path / "repo", 16)
    error = the_error(serve(repo, tmp_path / "data", host="0.0.0.0"))
    assert "OFFSHELF_TOKENS_FILE" in error and "127.0.0.1" in error and "OFFSHELF_INSECURE" in error
    (tmp_path / "tokens").write_text("reader 0123\n")
    error = the_error(serve(repo, tmp_path / "data", host="0.0.0.0", tokens_file=str(tmp_path / "tokens")))
    assert "line 1" in error and "read, write, admin" in error


def test_a_broken_serving_json_is_a_startup_error_naming_the_file(tmp_path):
    repo = write_identity_model(tmp_path / "repo", 16)
    config = repo / "random-projection-16" / "serving.json"
    config.write_text('{"version_policy": {"latest": 1, "all": true}}')
    error = the_error(serve(repo, tmp_path / "data"))
    assert str(config) in error and "choose one of latest, all and specific" in error, error
