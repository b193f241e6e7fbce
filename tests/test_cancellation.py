"""Calls whose caller has gone stop costing (issue 14, section 2): a storm of cancelled Embed calls is decoded and
inferred only as far as it got before the cancellation, and is counted as CANCELLED, not OK."""

from __future__ import annotations

import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

from support import shared_photos

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
