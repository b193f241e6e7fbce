"""Prometheus metrics of one server, in a registry of their own, served on their own HTTP port."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "offshelf_requests_total",
            "RPCs answered, by method and gRPC status code.",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "offshelf_request_duration_seconds",
            "RPC latency, by method.",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "offshelf_batch_size_images",
            "Images per inference call, by model.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "offshelf_queue_wait_seconds",
            "Time images wait for a batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "offshelf_inference_duration_seconds",
            "Time of one inference call.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.models = Gauge(
            "offshelf_model_info",
            "Loaded models (value 1), with version and execution provider.",
            ["model", "version", "provider"],
            registry=self.registry,
        )
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics endpoint and returns its port."""
        self._http, self._http_thread = start_http_server(port, host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
