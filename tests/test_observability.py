"""Request ids, the access log and what offshelf_requests_total counts (issue 16)."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

from common import ServerProcess, skimage_photo

MODEL = "random-projection-1280"  # the tiny repository's model


@pytest.fixture(scope="module")
def observed(tiny_repo, tmp_path_factory):
    server = ServerProcess(tiny_repo, tmp_path_factory.mktemp("observed"), drain_seconds=0)
    server.wait_serving()
    channel = grpc.insecure_channel(server.address)
    yield server, embedding_pb2_grpc.EmbeddingStub(channel)
    channel.close()
    server.terminate()


def embed(stub, images: list[bytes], request_id: str | None = None) -> tuple[str, str]:
    """(status code, x-request-id of the trailing metadata) of an Embed call."""
    metadata = (("x-request-id", request_id),) if request_id is not None else ()
    request = embedding_pb2.EmbedRequest(model=MODEL, images=images)
    try:
        _, call = stub.Embed.with_call(request, metadata=metadata, timeout=30)
        code, trailing = "OK", call.trailing_metadata()
    except grpc.RpcError as err:
        code, trailing = err.code().name, err.trailing_metadata()
    return code, dict(trailing)["x-request-id"]


def access_lines(server: ServerProcess, request_id: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [e for e in server.logs if e.get("logger") == "offshelf.access" and e.get("request_id") == request_id]
        if lines:
            return lines
        time.sleep(0.05)
    return []


def test_a_request_id_is_echoed_or_made_and_its_call_logged_once(observed):
    server, stub = observed
    photo = skimage_photo("coffee.png").read_bytes()
    assert embed(stub, [photo], "caller-42") == ("OK", "caller-42")
    (line,) = access_lines(server, "caller-42")
    assert (line["rpc"], line["code"], line["model"], line["images"]) == ("Embed", "OK", MODEL, 1)
    assert line["ms"] > 0 and line["peer"].startswith("ipv4:127.0.0.1:")
    code, made = embed(stub, [b"junk"])  # none sent: one is made, and errors carry it too
    assert code == "INVALID_ARGUMENT" and len(made) == 32
    (line,) = access_lines(server, made)
    assert (line["code"], line["images"]) == ("INVALID_ARGUMENT", 1)
    for hostile in ['{"level": "error"} <b>', "x" * 200]:  # not plain enough to log and echo, or too long
        _, replaced = embed(stub, [photo], hostile)
        assert len(replaced) == 32 and replaced.isalnum()


def test_requests_are_counted_by_model_and_health_checks_not_at_all(observed):
    server, stub = observed
    with grpc.insecure_channel(server.address) as channel:
        for _ in range(5):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    embed(stub, [skimage_photo("coffee.png").read_bytes()])
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    counted = {
        (s.labels["rpc"], s.labels["code"], s.labels["model"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "offshelf_requests_total"
    }
    assert ("Embed", "OK", MODEL) in counted
    assert not [rpc for rpc, _, _ in counted if rpc in ("Check", "Watch")]
    assert not [e for e in server.logs if e.get("logger") == "offshelf.access" and e.get("rpc") == "Check"]


def test_the_access_log_can_be_turned_off(tiny_repo, tmp_path):
    server = ServerProcess(tiny_repo, tmp_path / "data", drain_seconds=0, access_log="false")
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            assert embed(embedding_pb2_grpc.EmbeddingStub(channel), [b"junk"], "quiet")[1] == "quiet"
        time.sleep(0.3)
        assert not [e for e in server.logs if e.get("logger") == "offshelf.access"]
    finally:
        server.terminate()
