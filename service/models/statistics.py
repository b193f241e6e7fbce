"""Per model version: counts and times since it loaded, as Triton's ModelStatistics reports them.

A request is one call to the model (Embed, ModelInfer, a search or classification by image): it succeeds or
fails, and spends compute_input decoding, queue waiting for its batch and compute_infer in its batch's run (a
request of more images than max_batch_size counts once per batch it is split into). Prometheus has the same
times as histograms; these are what tritonclient's get_inference_statistics reads.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Duration:
    count: int
    ns: int


@dataclass(frozen=True)
class Statistics:
    """What Triton's ModelStatistics holds for one version (the OIP door converts it)."""

    last_inference_ms: int
    inference_count: int  # images
    execution_count: int  # batches
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    batches: list[tuple[int, Duration]]  # (batch size, its runs), by size


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def frozen(self) -> Duration:
        return Duration(self.count, self.ns)


class InferenceStatistics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._success = _Duration()
        self._fail = _Duration()
        self._queue = _Duration()
        self._input = _Duration()
        self._infer = _Duration()
        self._batches: defaultdict[int, _Duration] = defaultdict(_Duration)
        self._images = 0
        self._last_inference_ms = 0

    def request(self, succeeded: bool, seconds: float, decoding_seconds: float = 0.0) -> None:
        with self._lock:
            (self._success if succeeded else self._fail).add(seconds)
            if decoding_seconds:
                self._input.add(decoding_seconds)

    def batch(self, images: int, seconds: float, queue_waits: list[float]) -> None:
        """A batch of `images` ran for `seconds`; its requests' parts waited `queue_waits` for it."""
        with self._lock:
            self._batches[images].add(seconds)
            self._images += images
            self._last_inference_ms = int(time.time() * 1000)
            for wait in queue_waits:
                self._queue.add(wait)
            self._infer.add(seconds * len(queue_waits), len(queue_waits))

    def snapshot(self) -> Statistics:
        with self._lock:
            return Statistics(
                last_inference_ms=self._last_inference_ms,
                inference_count=self._images,
                execution_count=sum(d.count for d in self._batches.values()),
                success=self._success.frozen(),
                fail=self._fail.frozen(),
                queue=self._queue.frozen(),
                compute_input=self._input.frozen(),
                compute_infer=self._infer.frozen(),
                batches=[(size, d.frozen()) for size, d in sorted(self._batches.items())],
            )
