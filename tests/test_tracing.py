"""OpenTelemetry spans (issue 16): exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, to a real OTLP/gRPC
receiver here; one trace per call with decode, queue, inference and search under the RPC's span."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from offshelf.clients import Client

from common import ServerProcess, skimage_photo, until

MODEL = "random-projection-1280"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the RPC's name
        with self.lock:
            self.spans += [s for r in request.resource_spans for scope in r.scope_spans for s in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver():
    received = Receiver()
    server = grpc.server(ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield received, f"http://127.0.0.1:{port}"
    server.stop(0)


def test_a_call_is_one_trace_with_decode_queue_inference_and_search(tiny_repo, tmp_path, receiver):
    received, endpoint = receiver
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = ServerProcess(tiny_repo, tmp_path / "data", drain_seconds=0, environment=tracing)
    try:
        server.wait_serving()
        with Client(server.address) as client:
            client.create_collection("traced", model=MODEL)
            client.add("traced", vectors=np.eye(4, 1280, dtype=np.float32), ids=list("abcd"))
            client.search("traced", image=skimage_photo("coffee.png"), k=2)
        until(lambda: "search" in {s.name for s in received.spans}, timeout=30, what="the search span")
    finally:
        server.terminate()
    (rpc,) = [s for s in received.spans if s.name == "/offshelf.v1.Index/Search"]
    inside = {s.name: s for s in received.spans if s.trace_id == rpc.trace_id and s is not rpc}
    assert set(inside) == {"decode", "queue", "inference", "search"}, sorted(inside)
    assert all(s.parent_span_id == rpc.span_id for s in inside.values())
    assert inside["queue"].end_time_unix_nano <= inside["inference"].start_time_unix_nano


def test_an_http_call_is_one_trace_too_and_joins_the_callers_trace(tiny_repo, tmp_path, receiver):
    received, endpoint = receiver
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = ServerProcess(tiny_repo, tmp_path / "data", drain_seconds=0, http_port=0, environment=tracing)
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        server.wait_serving()
        with Client(server.address) as client:
            client.create_collection("traced", model=MODEL)
            client.add("traced", vectors=np.eye(4, 1280, dtype=np.float32), ids=list("abcd"))
        photo = skimage_photo("coffee.png")
        answer = requests.post(
            f"{server.http_url}/v1/collections/traced/search",
            files={"image": (photo.name, photo.read_bytes()), "request": (None, '{"k": 2}')},
            headers={"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        until(lambda: "search" in {s.name for s in received.spans}, timeout=30, what="the search span")
    finally:
        server.terminate()
    (call,) = [s for s in received.spans if s.name == "/offshelf.v1.Index/Search"]
    assert call.trace_id.hex() == caller_trace and call.parent_span_id.hex() == "00f067aa0ba902b7"
    attributes = {a.key: a.value for a in call.attributes}
    assert attributes["http.route"].string_value == "/v1/collections/{name}/search"
    inside = {s.name: s for s in received.spans if s.trace_id == call.trace_id and s is not call}
    assert set(inside) == {"decode", "queue", "inference", "search"}, sorted(inside)
    assert all(s.parent_span_id == call.span_id for s in inside.values())
