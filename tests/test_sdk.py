"""The Python SDK: the asyncio client against the real server, folder and glob adds, deadlines, retries on
UNAVAILABLE only, TLS and the bearer token."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from offshelf.clients import AsyncClient, Client, DeadlineExceeded, InvalidArgument, Label, Unavailable

from common import shared_photos, skimage_photo

PHOTOS = [skimage_photo(n) for n in ("chelsea.png", "coffee.png", "rocket.jpg")]


def test_async_client_gives_what_the_sync_client_gives(server, client):
    photos = [p for cls in ("ants", "bees") for p in shared_photos(f"hymenoptera/train/{cls}", 6)]
    folder = photos[0].parent.parent  # hymenoptera/train: both class folders

    async def scenario():
        async with AsyncClient(server.address) as aclient:
            embedded, models = await asyncio.gather(aclient.embed(PHOTOS), aclient.list_models())
            await aclient.create_collection("sdk-async")
            added = await aclient.add_images("sdk-async", [folder / "ants", f"{folder}/bees/*.jpg"], progress=False)
            hits = await aclient.search("sdk-async", image=photos[0], k=3)
            await aclient.train_head("sdk-async-head", "ncm", images=photos, labels=[p.parent.name for p in photos])
            head = await aclient.wait_for_head("sdk-async-head")
            top = await aclient.classify(photos[:2], "sdk-async-head", k=1)
            collection = await aclient.get_collection("sdk-async")
            await aclient.delete_collection("sdk-async")
            return embedded, models, added, hits, head, top, collection

    embedded, models, added, hits, head, top, collection = asyncio.run(scenario())
    expected = client.embed(PHOTOS)
    assert embedded.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(embedded[name], expected[name], atol=1e-6)
    assert [m.name for m in models] == [m.name for m in client.list_models()]
    files_in_folders = sorted((folder / "ants").glob("*")) + sorted((folder / "bees").glob("*.jpg"))
    assert len(added) == len(files_in_folders) == collection.count
    assert hits[0].score == pytest.approx(1.0, abs=1e-4) and len(hits) == 3  # the query photo itself
    assert head.card.kind == "ncm" and list(head.card.labels) == ["ants", "bees"]
    assert [t[0].label for t in top] == ["ants", "ants"] and isinstance(top[0][0], Label)


def test_every_call_has_a_deadline(server):
    with Client(server.address, timeout=0.001) as hurried, pytest.raises(DeadlineExceeded):
        hurried.embed(PHOTOS * 10)


def requests_counted(server, rpc: str, code: str) -> float:
    """offshelf_requests_total of the rpc and code, over every model label."""
    text = urllib.request.urlopen(server.metrics_url).read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "offshelf_requests_total" and (s.labels["rpc"], s.labels["code"]) == (rpc, code)
    )


def test_invalid_argument_is_not_retried(server):
    before = requests_counted(server, "Embed", "INVALID_ARGUMENT")
    with Client(server.address, retries=4) as patient, pytest.raises(InvalidArgument):
        patient.embed([b"not an image"])
    assert requests_counted(server, "Embed", "INVALID_ARGUMENT") == before + 1


class FlakyHealth(health_pb2_grpc.HealthServicer):
    """A peer that answers UNAVAILABLE `failures` times, then SERVING; it records the metadata it saw."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0
        self.metadata: list[dict[str, str]] = []

    def Check(self, request, context):
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded; retry with backoff")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def peer(servicer: FlakyHealth, credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = (
        server.add_secure_port("localhost:0", credentials) if credentials else server.add_insecure_port("127.0.0.1:0")
    )
    server.start()
    return server, port


def test_unavailable_is_retried_with_backoff_then_given_up():
    flaky = FlakyHealth(failures=2)
    server, port = peer(flaky)
    try:
        with Client(f"127.0.0.1:{port}", retries=3, initial_backoff=0.05) as patient:
            assert patient.health() == "SERVING" and flaky.calls == 3
        flaky.calls, flaky.failures = 0, 10
        with Client(f"127.0.0.1:{port}", retries=2, initial_backoff=0.05) as patient:
            with pytest.raises(Unavailable):
                patient.health()
        assert flaky.calls == 3
        flaky.calls = 0
        with Client(f"127.0.0.1:{port}", retries=0) as impatient, pytest.raises(Unavailable):
            impatient.health()
        assert flaky.calls == 1
    finally:
        server.stop(0)


def test_tls_and_bearer_token(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    listening = FlakyHealth(failures=0)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server, port = peer(listening, credentials)
    try:
        with Client(f"localhost:{port}", tls=True, ca_cert=cert, token="s3cret") as secure:
            assert secure.health() == "SERVING"
        assert listening.metadata[-1]["authorization"] == "Bearer s3cret"
        with Client(f"localhost:{port}", timeout=5, retries=0) as plaintext, pytest.raises(Unavailable):
            plaintext.health()  # a plaintext client cannot talk to a TLS port: refused, not left to its deadline
    finally:
        server.stop(0)
