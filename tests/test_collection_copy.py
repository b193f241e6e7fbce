"""`offshelf collection copy` (Client.copy_collection) between two servers: a re-run completes an interrupted copy,
and the source and the target each get their own credentials."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid

import numpy as np
import pytest

from offshelf.clients import Client
from offshelf.clients import client as client_module
from offshelf.clients.errors import FailedPrecondition

from common import ServerProcess, clustered_vectors

TINY = "random-projection-1280"
SOURCE_TOKEN, TARGET_TOKEN = "s0urce-admin", "t4rget-admin"


def tokens_file(path, token: str):
    path.write_text(f"admin {hashlib.sha256(token.encode()).hexdigest()}  copier\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def servers(tiny_repo, tmp_path_factory):
    """A source and a target server, each with its own admin token."""
    started = []
    try:
        for role, token in (("source", SOURCE_TOKEN), ("target", TARGET_TOKEN)):
            folder = tmp_path_factory.mktemp(f"copy-{role}")
            started.append(
                ServerProcess(
                    tiny_repo,
                    folder / "data",
                    client={"token": token},
                    tokens_file=tokens_file(folder / "tokens", token),
                    drain_seconds=0,
                )
            )
        for server in started:
            server.wait_serving()
        yield started
    finally:
        for server in started:
            server.kill()


def fill(client: Client, name: str, count: int) -> None:
    client.create_collection(name, model=TINY, index_type="hnsw")
    vectors = clustered_vectors(count, 1280, seed=2)
    client.add(name, vectors=vectors, ids=[f"c{i:03d}" for i in range(count)], labels=["a", "b"] * (count // 2))


def test_a_rerun_completes_an_interrupted_copy(servers, monkeypatch):
    source_server, target_server = servers
    name = f"resumed-{uuid.uuid4().hex[:8]}"
    with (
        Client(source_server.address, token=SOURCE_TOKEN) as source,
        Client(target_server.address, token=TARGET_TOKEN) as target,
    ):
        fill(source, name, 60)
        # an interrupted copy: the collection there, with the first 25 items
        target.create_collection(name, model=TINY, index_type="hnsw")
        first = source.get_items(name, [f"c{i:03d}" for i in range(25)], with_vectors=True)
        target._add_items(name, first)
        copied = source.copy_collection(name, target, batch=20, progress=False)
        assert copied.count == 60
        there, here = list(target.iter_items(name, with_vectors=True)), list(source.iter_items(name, with_vectors=True))
        assert [(i.id, i.label) for i in there] == [(i.id, i.label) for i in here]
        np.testing.assert_array_equal(np.stack([i.vector for i in there]), np.stack([i.vector for i in here]))
        assert source.copy_collection(name, target, progress=False).count == 60  # a third run: nothing to do

        monkeypatch.setattr(client_module, "COUNT_SECONDS", 0)  # counts of the embedded store need no wait
        target.remove(name, ["c007"])
        target.add(name, vectors=clustered_vectors(2, 1280, seed=9), ids=["extra1", "extra2"])
        with pytest.raises(FailedPrecondition, match="holds 62 items and the source 60"):
            source.copy_collection(name, target, progress=False)  # c007 copied again; the extras stay

        target.create_collection(f"{name}-other", model=TINY, index_type="flat")
        with pytest.raises(FailedPrecondition, match="another index_type"):
            source.copy_collection(name, target, as_name=f"{name}-other", progress=False)


def test_the_cli_sends_each_server_its_own_token(servers):
    source_server, target_server = servers
    name = f"tokens-{uuid.uuid4().hex[:8]}"
    with Client(source_server.address, token=SOURCE_TOKEN) as source:
        fill(source, name, 10)

    def copy(*options: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "offshelf.clients.cli", "collection", "copy", name]
        command += ["--server", source_server.address, "--to", target_server.address, *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    refused = copy("--token", SOURCE_TOKEN)  # the source's token is not sent to the target
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr, refused.stderr
    done = copy("--token", SOURCE_TOKEN, "--to-token", TARGET_TOKEN)
    assert done.returncode == 0, done.stderr
    assert "10 items" in done.stdout
    with Client(target_server.address, token=TARGET_TOKEN) as target:
        assert target.get_collection(name).count == 10
