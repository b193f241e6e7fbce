"""Prometheus metrics: the real exposition after real traffic, promtool's lint, and a real Prometheus server
scraping the service and answering queries about it."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from offshelf.clients import Client

from common import ServerProcess, shared_photos, skimage_photo


def scrape(server: ServerProcess) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(server.metrics_url).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, metric: str, **labels) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def provider(server: ServerProcess) -> str:
    """The execution provider the server chose for the default model (CUDA where it really works)."""
    with Client(server.address) as client:
        return client.list_models()[0].versions[0].execution_provider


def test_exposition_counts_the_traffic(traffic):
    samples = scrape(traffic)
    model = "efficientnet-lite0/1"
    assert value(samples, "offshelf_requests_total", rpc="Embed", code="OK", model="efficientnet-lite0") == 1
    # the images were bad: refused while the model decoded them
    assert (
        value(samples, "offshelf_requests_total", rpc="Embed", code="INVALID_ARGUMENT", model="efficientnet-lite0") == 2
    )
    assert value(samples, "offshelf_decode_failures_total", reason="empty") == 1
    assert value(samples, "offshelf_decode_failures_total", reason="unsupported_format") == 1
    assert value(samples, "offshelf_request_duration_seconds_count", rpc="Embed") == 3
    assert value(samples, "offshelf_in_flight_requests", rpc="Embed") == 0
    # 3 (Embed) + 24 (Add) + 8 (SearchBatch) + 8 (Classify) images went through the batcher
    assert value(samples, "offshelf_batch_size_images_sum", model=model) == 43
    assert value(samples, "offshelf_queue_depth_images", model=model) == 0
    assert value(samples, "offshelf_queue_capacity_images", model=model) > 0
    assert value(samples, "offshelf_queue_wait_seconds_count", model=model) >= 1
    assert value(samples, "offshelf_inference_duration_seconds_count", model=model) >= 1
    chosen = provider(traffic)
    assert value(samples, "offshelf_model_info", model="efficientnet-lite0", version="1", provider=chosen) == 1
    assert value(samples, "offshelf_search_duration_seconds_count", index_type="hnsw") == 1
    assert value(samples, "offshelf_collection_vectors", collection="objects") == 25
    assert value(samples, "offshelf_collection_disk_bytes", collection="objects") > 25 * 1280 * 4
    deadline = time.monotonic() + 60  # the traffic server saves indexes every 0.2 s; however slow the machine
    while value(samples, "offshelf_collection_unsaved_writes", collection="objects") != 0:
        assert time.monotonic() < deadline, "the index was never saved"
        time.sleep(0.1)
        samples = scrape(traffic)
    saved = value(samples, "offshelf_collection_last_index_save_timestamp_seconds", collection="objects")
    assert traffic.started_at <= saved <= time.time()  # saved after this server started, however long ago
    assert value(samples, "offshelf_head_jobs", state="succeeded") == 1
    assert value(samples, "offshelf_head_jobs", state="running") == 0
    assert value(samples, "process_resident_memory_bytes") > 0 and value(samples, "process_cpu_seconds_total") > 0
    gpu = {name for name, _ in samples if name.startswith("offshelf_gpu_")}
    if chosen == "CPUExecutionProvider":
        assert not gpu  # GPU series only where a model runs on CUDA
    else:
        assert gpu <= {f"offshelf_gpu_{m}" for m in ("memory_used_bytes", "memory_total_bytes", "utilization_ratio")}


def test_domain_shift_grows_when_queries_leave_the_indexed_domain(traffic):
    """The queries so far were indexed photos; then come photos of another kind (flowers, 32-px blurred)."""
    before = scrape(traffic)
    same = value(before, "offshelf_domain_shift", kind="collection", name="objects")
    head_same = value(before, "offshelf_domain_shift", kind="head", name="objects-head")
    assert same is not None and head_same is not None
    other = shared_photos("flowers", 60)
    with Client(traffic.address) as client:
        for start in range(0, len(other), 20):
            client.search_batch("objects", images=other[start : start + 20], k=1)
            client.classify(other[start : start + 20], "objects-head")
    after = scrape(traffic)
    shifted = value(after, "offshelf_domain_shift", kind="collection", name="objects")
    head_shifted = value(after, "offshelf_domain_shift", kind="head", name="objects-head")
    assert shifted > 2 * same and shifted - same > 0.05, (same, shifted)
    assert head_shifted > 2 * head_same and head_shifted - head_same > 0.05, (head_same, head_shifted)


def test_promtool_accepts_the_exposition(traffic, prometheus_tools):
    text = urllib.request.urlopen(traffic.metrics_url).read()
    checked = subprocess.run([prometheus_tools[1], "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_prometheus_scrapes_the_service(traffic, prometheus_tools, tmp_path):
    target = urllib.parse.urlparse(traffic.metrics_url).netloc
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: offshelf\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    prometheus = subprocess.Popen(
        [
            prometheus_tools[0],
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def query(promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = json.load(urllib.request.urlopen(url, timeout=5))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    try:
        with Client(traffic.address) as client:
            client.embed([skimage_photo("coffee.png")] * 2)  # Embed OK: 1 before, 2 now
        deadline, results = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            try:
                results = query(
                    'offshelf_requests_total{job="offshelf",rpc="Embed",code="OK",model="efficientnet-lite0"}'
                )
            except (OSError, urllib.error.URLError):
                results = []
            if results and float(results[0]["value"][1]) == 2:
                break
            time.sleep(0.5)
        assert results and float(results[0]["value"][1]) == 2, results
        assert query("up{job='offshelf'}")[0]["value"][1] == "1"
        assert float(query('offshelf_collection_vectors{collection="objects"}')[0]["value"][1]) == 25
        assert float(query('offshelf_head_jobs{state="succeeded"}')[0]["value"][1]) == 1
        info = query("offshelf_model_info")[0]["metric"]
        assert (info["model"], info["provider"]) == ("efficientnet-lite0", provider(traffic))
        p99 = query("histogram_quantile(0.99, sum by (le) (offshelf_request_duration_seconds_bucket{rpc='Embed'}))")
        assert np.isfinite(float(p99[0]["value"][1]))
        assert {r["metric"]["kind"] for r in query("offshelf_domain_shift")} == {"collection", "head"}
    finally:
        prometheus.terminate()
        prometheus.wait(30)


def test_only_the_metrics_path_is_served(traffic):
    base = traffic.metrics_url.removesuffix("/metrics")
    for path in ("/", "/favicon.ico", "/metrics/../debug", "/healthz"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=10)
        assert refused.value.code == 404, path
    assert b"offshelf_requests_total" in urllib.request.urlopen(traffic.metrics_url, timeout=10).read()


def test_collection_names_are_not_label_values_unless_asked_for(tiny_server):
    import hashlib

    name = "tenant-acme-private"
    with Client(tiny_server.address) as client:
        client.create_collection(name, model="random-projection-1280")
        try:
            text = urllib.request.urlopen(tiny_server.metrics_url, timeout=10).read().decode()
        finally:
            client.delete_collection(name)
    assert name not in text
    assert (
        f'offshelf_collection_vectors{{collection="sha256:{hashlib.sha256(name.encode()).hexdigest()[:12]}"}}' in text
    )
