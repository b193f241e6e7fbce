"""Admission: a model refuses work it has no room for before paying for it (decoding), and a request that
fails while admitted gives its room back."""

from __future__ import annotations

import collections
import pathlib
import sys
import threading
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from offshelf.clients import Client
from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

from common import ServerProcess, serving, skimage_photo, until, write_identity_model

MODEL = "random-projection-16"


def tiny_server(root: pathlib.Path, **settings: object) -> Iterator[ServerProcess]:
    """A server on the 16-d tiny model whose batches wait a minute to fill."""
    with serving(
        write_identity_model(root / "repo", 16),
        root / "data",
        max_batch_delay_ms=60_000,
        eager_batching=False,
        drain_seconds=0,
        **settings,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def one_image_queue(tmp_path_factory):
    """A queue that holds one image, which then waits a minute for a second one."""
    yield from tiny_server(tmp_path_factory.mktemp("admission"), max_queue_images=1, max_batch_size=2)


def sample(server: ServerProcess, name: str) -> float:
    text = urllib.request.urlopen(server.metrics_url).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_a_failed_decode_gives_its_room_back_and_an_unknown_augmentation_is_refused(one_image_queue):
    """Runs first: the one-image queue is empty, so each request is admitted, then fails."""
    with Client(one_image_queue.address) as client:
        for _ in range(3):  # each would find the queue full if the failed one kept its room
            with pytest.raises(grpc.RpcError) as err:
                client.embed([b"not an image"], model=MODEL)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request = embedding_pb2.EmbedRequest(model=MODEL, images=[b"x"], augmentation=7)
        with pytest.raises(grpc.RpcError) as err:
            client.stubs["embedding"].Embed(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "augmentation 7 is unknown" in err.value.details()
    assert sample(one_image_queue, "offshelf_queue_depth_images") == 0


def test_an_overloaded_model_refuses_before_decoding(one_image_queue):
    photo = skimage_photo("chelsea.png").read_bytes()
    failures_before = sample(one_image_queue, "offshelf_decode_failures_total")
    waiting = Client(one_image_queue.address, timeout=120)
    threading.Thread(target=lambda: _ignore_errors(waiting.embed, [photo], model=MODEL), daemon=True).start()
    until(lambda: sample(one_image_queue, "offshelf_queue_depth_images") == 1)
    with Client(one_image_queue.address, retries=0) as client, pytest.raises(grpc.RpcError) as err:
        client.embed([b"not an image"], model=MODEL)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert "overloaded" in err.value.details()
    assert sample(one_image_queue, "offshelf_decode_failures_total") == failures_before  # never decoded


def _ignore_errors(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except grpc.RpcError:
        pass  # the server is killed while this request still waits for a second image


@pytest.fixture(scope="module")
def two_calls(tmp_path_factory):
    """A server that handles two calls at once, whose batches wait a minute to fill 8 images."""
    settings = {"max_concurrent_calls": 2, "worker_threads": 4, "max_batch_size": 8, "http_port": 0}
    yield from tiny_server(tmp_path_factory.mktemp("two-calls"), **settings)


def test_calls_give_their_slot_back_however_they_end(two_calls):
    """Runs first: one call after another, each ends before the next, so none is refused for the limit."""
    photo = skimage_photo("chelsea.png").read_bytes()
    with Client(two_calls.address, retries=0, timeout=60) as client:
        for _ in range(3):
            assert client.embed([photo] * 8, model=MODEL)["embedding"].shape == (8, 16)  # a full batch runs at once
            with pytest.raises(grpc.RpcError) as err:
                client.embed([b"not an image"], model=MODEL)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as err:
                client.search("no-such-collection", vector=[0.0] * 16)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_calls_beyond_the_limit_are_refused_at_once_while_health_answers(two_calls):
    """Two one-image calls wait for their batch to fill; the others are refused, not queued behind them (before
    the limit, all four took the server's four threads, and a health check waited for a free one)."""
    photo = skimage_photo("chelsea.png").read_bytes()
    with grpc.insecure_channel(two_calls.address) as channel:
        embed = embedding_pb2_grpc.EmbeddingStub(channel).Embed
        calls = [embed.future(embedding_pb2.EmbedRequest(model=MODEL, images=[photo]), timeout=120) for _ in range(4)]
        until(lambda: sum(call.done() for call in calls) == 2, timeout=30)
        for call in (call for call in calls if call.done()):
            assert call.exception().code() == grpc.StatusCode.UNAVAILABLE
            assert "limit of 2 calls" in call.exception().details()
        assert sample(two_calls, "offshelf_in_flight_requests") == 2
        with Client(two_calls.address, retries=0, timeout=30) as client:
            assert client.health() == "SERVING"
            with pytest.raises(grpc.RpcError) as err:
                client.list_collections()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        refused = requests.get(f"{two_calls.http_url}/v1/collections", timeout=30)  # one limit for both doors
        assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
        assert "limit of 2 calls" in refused.json()["error"]
        assert requests.get(f"{two_calls.http_url}/v2/health/ready", timeout=30).status_code == 200  # open


@pytest.mark.skipif(sys.platform != "linux", reason="thread nice values are Linux's")
def test_inference_runs_below_the_rpc_threads_priority(two_calls):
    """Inference saturating the CPU must not slow refusals and health checks: its threads (the batcher's and
    onnxruntime's) run at nice 10, every other thread at 0."""
    niceness = collections.Counter()
    for task in pathlib.Path(f"/proc/{two_calls.process.pid}/task").iterdir():
        stat = (task / "stat").read_text()
        niceness[int(stat.rsplit(")", 1)[1].split()[16])] += 1  # field 19 of proc(5): nice
    assert niceness[10] >= 1 and niceness[0] >= 1 and set(niceness) == {0, 10}, niceness
