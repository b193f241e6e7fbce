"""Prometheus metrics of one server, in a registry of their own, served on their own HTTP port.

Metrics updated where things happen live here; state read at scrape time (collections, heads, GPUs)
comes from the collectors in state_metrics.py.
"""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info
        self.requests = Counter(
            "offshelf_requests_total",
            "RPCs answered (health checks aside), by method, gRPC status code and the model that ran them ('' for "
            "none).",
            ["rpc", "code", "model"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "offshelf_request_duration_seconds",
            "RPC latency, by method.",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "offshelf_http_requests_total",
            "Calls answered by the HTTP door (health and the page aside), by method, route template, HTTP status "
            "and the model that ran them ('' for none).",
            ["method", "route", "status", "model"],
            registry=self.registry,
        )
        self.http_request_seconds = Histogram(
            "offshelf_http_request_duration_seconds",
            "HTTP door latency, by method and route template.",
            ["method", "route"],
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
        self.dropped_images = Counter(
            "offshelf_dropped_images_total",
            "Images queued for inference and dropped because their caller had gone (cancelled, deadline passed).",
            ["model"],
            registry=self.registry,
        )
        self.unclaimed_images = Counter(
            "offshelf_unclaimed_images_total",
            "Images inferred whose caller had gone, by when it went: while their batch ran (running), or before it "
            "started (queued: such images are dropped instead, so this stays 0).",
            ["model", "when"],
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
        self.in_flight = Gauge(
            "offshelf_in_flight_requests",
            "RPCs being answered now, by method.",
            ["rpc"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "offshelf_queue_depth_images",
            "Images admitted to a model and not yet running: being decoded, queued, or in a batch still filling.",
            ["model"],
            registry=self.registry,
        )
        self.queue_capacity = Gauge(
            "offshelf_queue_capacity_images",
            "Most images a model's batching queue holds; beyond it requests get UNAVAILABLE.",
            ["model"],
            registry=self.registry,
        )
        self.decode_failures = Counter(
            "offshelf_decode_failures_total",
            "Images refused before inference, by reason (empty, too_large, unsupported_format, corrupt).",
            ["reason"],
            registry=self.registry,
        )
        self.search_seconds = Histogram(
            "offshelf_search_duration_seconds",
            "Time of one FAISS search call (a Search or a SearchBatch), by index type.",
            ["index_type"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens_reload_errors = Counter(
            "offshelf_tokens_reload_errors_total",
            "Rewrites of the tokens file refused (a malformed line, a file others can write, a file gone): the "
            "tokens the new file no longer names stop working; no token is added.",
            registry=self.registry,
        )
        self.models = Gauge(
            "offshelf_model_info",
            "Loaded models (value 1), with version and execution provider.",
            ["model", "version", "provider"],
            registry=self.registry,
        )
        self.model_load_failures = Counter(
            "offshelf_model_load_failures_total",
            "Model versions that failed to load (a corrupt or incompatible folder) and serving.json files refused, "
            "by model; the versions served before serve on.",
            ["model"],
            registry=self.registry,
        )
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics endpoint and returns its port."""
        metrics = make_wsgi_app(self.registry)

        def only_metrics(environ, start_response):
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: metrics are served at /metrics only\n"]
            return metrics(environ, start_response)

        self._http = make_server(host, port, only_metrics, ThreadingWSGIServer, handler_class=QuietHandler)
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True)
        self._http_thread.start()
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, as prometheus_client's own server does."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # no access line per scrape on stderr
        pass
