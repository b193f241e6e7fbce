"""Admission: a model refuses work it has no room for before paying for it (decoding), and a request that
fails while admitted gives its room back."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from offshelf.clients import Client
from offshelf.protos.v1 import embedding_pb2

from support import ServerProcess, skimage_photo, write_identity_model

MODEL = "random-projection-16"


@pytest.fixture(scope="module")
def one_image_queue(tmp_path_factory):
    """A server on the tiny model whose queue holds one image, which then waits a minute for a second one."""
    root = tmp_path_factory.mktemp("admission")
    settings = {"max_queue_images": 1, "max_batch_size": 2, "max_batch_delay_ms": 60_000, "drain_seconds": 0}
    server = ServerProcess(write_identity_model(root / "repo", 16), root / "data", **settings)
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()


def sample(server: ServerProcess, name: str) -> float:
    text = urllib.request.urlopen(server.metrics_url).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


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
    wait_for(lambda: sample(one_image_queue, "offshelf_queue_depth_images") == 1)
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
