"""Calls whose caller has gone stop costing (issue 14, section 2): a storm of cancelled Embed calls is decoded and
inferred only as far as it got before the cancellation, and is counted as CANCELLED, not OK."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

from common import serving, shared_photos, skimage_photo, write_identity_model

CALLS, IMAGES = 40, 8


def sample(server, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_a_cancel_storm_costs_little_inference_and_is_counted_as_cancelled(server):
    photos = [p.read_bytes() for p in shared_photos("ukbench", IMAGES)]
    inferred_before = sample(server, "offshelf_batch_size_images_sum")
    cancelled_before = sample(server, "offshelf_requests_total", rpc="Embed", code="CANCELLED")
    ok_before = sample(server, "offshelf_requests_total", rpc="Embed", code="OK")
    with grpc.insecure_channel(server.address) as channel:
        stub = embedding_pb2_grpc.EmbeddingStub(channel)
        request = embedding_pb2.EmbedRequest(model="efficientnet-lite0", images=photos)
        calls = [stub.Embed.future(request, timeout=60) for _ in range(CALLS)]
        time.sleep(0.1)
        cancelled = sum(call.cancel() for call in calls)
    deadline = time.monotonic() + 60
    while sample(server, "offshelf_in_flight_requests", rpc="Embed") > 0:
        assert time.monotonic() < deadline, "cancelled calls still running after 60 s"
        time.sleep(0.1)
    inferred = sample(server, "offshelf_batch_size_images_sum") - inferred_before
    answered = sample(server, "offshelf_requests_total", rpc="Embed", code="OK") - ok_before
    counted = sample(server, "offshelf_requests_total", rpc="Embed", code="CANCELLED") - cancelled_before
    assert cancelled > 0  # some calls were still running when cancelled (on a 2-core machine: nearly all)
    assert answered == CALLS - cancelled  # a cancelled call is never counted OK
    assert counted <= cancelled  # those cancelled before a handler started cost nothing and are not counted
    # only the answered calls, and at most a batch per model call already running, were inferred
    assert inferred <= (answered + 4) * IMAGES, (inferred, answered, cancelled)


@pytest.fixture(scope="module")
def filling_server(tmp_path_factory):
    """The 16-d tiny model, whose batches of 2 images wait a minute to fill."""
    root = tmp_path_factory.mktemp("filling")
    with serving(
        write_identity_model(root / "repo", 16),
        root / "data",
        max_batch_size=2,
        max_batch_delay_ms=60_000,
        eager_batching=False,
        drain_seconds=0,
        http_port=0,
    ) as server:
        yield server


def test_a_call_whose_deadline_passes_while_its_batch_fills_is_never_inferred(filling_server):
    """Its image waited in a batch still filling, was inferred with the next caller's (and its handler held until
    then): now the call ends at its deadline and the next caller's two images run alone."""
    photo = skimage_photo("chelsea.png").read_bytes()
    inferred = sample(filling_server, "offshelf_batch_size_images_sum")
    dropped = sample(filling_server, "offshelf_dropped_images_total")
    with grpc.insecure_channel(filling_server.address) as channel:
        embed = embedding_pb2_grpc.EmbeddingStub(channel).Embed
        with pytest.raises(grpc.RpcError) as err:
            embed(embedding_pb2.EmbedRequest(model="random-projection-16", images=[photo]), timeout=3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 30
        while sample(filling_server, "offshelf_in_flight_requests", rpc="Embed") > 0:  # its handler has ended
            assert time.monotonic() < deadline, "the expired call's handler still waits for its batch"
            time.sleep(0.05)
        embed(embedding_pb2.EmbedRequest(model="random-projection-16", images=[photo] * 2), timeout=60)
    assert sample(filling_server, "offshelf_batch_size_images_sum") - inferred == 2
    assert sample(filling_server, "offshelf_dropped_images_total") - dropped == 1


def test_an_http_call_whose_client_leaves_while_its_batch_fills_is_never_inferred(filling_server):
    """As above, over the HTTP door: the client's disconnect cancels the call."""
    photo = skimage_photo("chelsea.png").read_bytes()
    inferred = sample(filling_server, "offshelf_batch_size_images_sum")
    dropped = sample(filling_server, "offshelf_dropped_images_total")
    with pytest.raises(requests.exceptions.ReadTimeout):  # the client gives up and closes its connection
        requests.post(
            f"{filling_server.http_url}/v1/models/random-projection-16/embed", files={"image": photo}, timeout=3
        )
    deadline = time.monotonic() + 30
    while sample(filling_server, "offshelf_in_flight_requests", rpc="Embed") > 0:  # its handler has ended
        assert time.monotonic() < deadline, "the abandoned call's handler still waits for its batch"
        time.sleep(0.05)
    with grpc.insecure_channel(filling_server.address) as channel:
        embed = embedding_pb2_grpc.EmbeddingStub(channel).Embed
        embed(embedding_pb2.EmbedRequest(model="random-projection-16", images=[photo] * 2), timeout=60)
    assert sample(filling_server, "offshelf_batch_size_images_sum") - inferred == 2
    assert sample(filling_server, "offshelf_dropped_images_total") - dropped == 1
    statuses = [e.get("status") for e in filling_server.logs if e.get("protocol") == "http"]
    assert statuses[-1] == 499  # counted as the client's leaving, not as an answer
