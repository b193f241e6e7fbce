"""Metrics read at scrape time: collections (vectors, bytes, unsaved writes, last index save), heads (training jobs by
state), domain shift of both, and GPU memory and utilisation through NVML when a model runs on CUDA."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from offshelf.service.errors import Unavailable
from offshelf.service.heads.registry import HeadRegistry
from offshelf.service.heads.storage import JobState

if TYPE_CHECKING:
    from offshelf.service.index.contract import CollectionCatalog

log = logging.getLogger(__name__)
JOB_STATES = {
    JobState.QUEUED: "queued",
    JobState.RUNNING: "running",
    JobState.SUCCEEDED: "succeeded",
    JobState.FAILED: "failed",
}


class StateCollector(Collector):
    def __init__(self, collections: CollectionCatalog, heads: HeadRegistry, names: bool = False):
        self.collections = collections
        self.heads = heads
        self.names = names  # collection and head names as label values; else a hash of each (names can be tenants')

    def label(self, name: str) -> str:
        return name if self.names else "sha256:" + hashlib.sha256(name.encode()).hexdigest()[:12]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        vectors = GaugeMetricFamily("offshelf_collection_vectors", "Items in a collection.", labels=["collection"])
        disk = GaugeMetricFamily(
            "offshelf_collection_disk_bytes", "Bytes a collection's folder holds.", labels=["collection"]
        )
        unsaved = GaugeMetricFamily(
            "offshelf_collection_unsaved_writes",
            "Writes in a collection's database that its saved FAISS index lacks (re-added at start).",
            labels=["collection"],
        )
        saved = GaugeMetricFamily(
            "offshelf_collection_last_index_save_timestamp_seconds",
            "Unix time a collection's FAISS index was last saved.",
            labels=["collection"],
        )
        shift = GaugeMetricFamily(
            "offshelf_domain_shift",
            "Cosine distance between the mean of recent query embeddings and the mean of the embeddings a "
            "collection holds or a head was trained on (0: no shift).",
            labels=["kind", "name"],
        )
        try:
            collections = self.collections.all()
        except Unavailable:  # Milvus away (logged once, by its client): the other metrics are scraped still
            collections = []
        for collection in collections:
            name, info = self.label(collection.name), collection.info()  # one count (a query on Milvus)
            vectors.add_metric([name], info.count)
            disk.add_metric([name], info.bytes_on_disk)
            unsaved.add_metric([name], collection.unsaved_writes)
            if collection.last_index_save_at is not None:
                saved.add_metric([name], collection.last_index_save_at)
            distance = collection.drift.shift(collection.mean())
            if distance is not None:
                shift.add_metric(["collection", name], distance)
        jobs = GaugeMetricFamily(
            "offshelf_head_jobs", "Heads whose latest training job is in each state.", labels=["state"]
        )
        counts = dict.fromkeys(JOB_STATES.values(), 0)
        for entry in self.heads.all():
            if entry.job.state in JOB_STATES:
                counts[JOB_STATES[entry.job.state]] += 1
            served = entry.served
            distance = served.drift.shift(served.training_mean) if served is not None else None
            if distance is not None:
                shift.add_metric(["head", self.label(entry.name)], distance)
        for state, count in counts.items():
            jobs.add_metric([state], count)
        yield from (vectors, disk, unsaved, saved, jobs, shift)


class GpuCollector(Collector):
    """GPU memory and utilisation from NVML (the nvidia-ml-py package); registered only when a model runs on
    CUDA and NVML can be initialised, so the series are absent on CPU machines."""

    def __init__(self, nvml):
        self.nvml = nvml

    @classmethod
    def create(cls) -> GpuCollector | None:
        """The collector, or None when NVML cannot be initialised."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as err:  # not installed, or no driver: no GPU metrics
            log.info("no GPU metrics: NVML unavailable (%s)", err)
            return None
        return cls(pynvml)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        memory = GaugeMetricFamily("offshelf_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"])
        total = GaugeMetricFamily("offshelf_gpu_memory_total_bytes", "GPU memory.", labels=["gpu"])
        utilisation = GaugeMetricFamily(
            "offshelf_gpu_utilization_ratio", "Fraction of time the GPU was busy (NVML's sample).", labels=["gpu"]
        )
        for index in range(self.nvml.nvmlDeviceGetCount()):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            info = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            memory.add_metric([str(index)], info.used)
            total.add_metric([str(index)], info.total)
            utilisation.add_metric([str(index)], self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
        yield from (memory, total, utilisation)
