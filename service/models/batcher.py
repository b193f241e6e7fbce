"""Dynamic batching in front of a runtime.

Requests are split into chunks of at most max_batch_size images when submitted, and one
worker thread merges queued chunks into batches of up to max_batch_size, waiting at most
max_delay after its first chunk for more. Eager (the default): a batch waits only while other
requests are admitted and still decoding; with none on the way it runs at once, so a lone
caller never waits for company, and what arrives while a batch runs forms the next. The
queue is bounded in images: a request that does not fit is refused at once with UNAVAILABLE.
Room is taken before a request's images are decoded (admit), so an overloaded model refuses
work before paying for it. If the worker dies, every pending and later request fails with
UNAVAILABLE.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from offshelf.service import cancellation, tracing
from offshelf.service.errors import Cancelled, Internal, InvalidArgument, Unavailable
from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics
from offshelf.service.models.statistics import InferenceStatistics

log = logging.getLogger(__name__)
Tensors = dict[str, np.ndarray]
UNCLAIMED = ("queued", "running")  # when the caller of images inferred for nobody went: before or after they started


class Runtime(Protocol):
    def run(self, batch: Tensors) -> Tensors: ...


@dataclass
class _Chunk:
    inputs: Tensors
    size: int
    shape: tuple  # of each input but the batch dimension: only chunks of one shape share a batch
    enqueued: float = field(default_factory=time.monotonic)
    result: Future[Tensors] = field(default_factory=Future)
    trace: tracing.Context = field(default_factory=tracing.current)  # its request's, for the queue and run spans
    call: cancellation.Call | None = field(default_factory=cancellation.current.get)


class Admission:
    """Room for a number of images in a batcher's queue, taken before they are decoded. Use it as a context
    manager: leaving it without run() (a decoding error, say) gives the room back."""

    def __init__(self, batcher: Batcher, images: int):
        self.batcher = batcher
        self.images = images
        self.queued = False

    def run(self, inputs: Tensors) -> Tensors:
        return self.run_groups([inputs])[0]

    def run_groups(self, groups: list[Tensors]) -> list[Tensors]:
        """Runs groups of inputs of different shapes (images kept whole), each group's of one shape; a batch holds
        one shape."""
        return self.batcher._enqueue(self, groups)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.queued:
            self.batcher._release(self.images)


class Batcher:
    def __init__(
        self,
        name: str,
        runtime: Runtime,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_images: int,
        metrics: Metrics,
        eager: bool = True,
        instances: int = 1,
        crowded_runtime: Runtime | None = None,
        statistics: InferenceStatistics | None = None,
    ):
        """instances: batches run at once, each by a worker thread of its own (onnxruntime sessions take
        concurrent runs); one worker at a time gathers a batch. crowded_runtime: the same model with fewer threads,
        for a batch that starts while another runs (the cores are shared then); `runtime` runs a batch alone.
        statistics: where each batch's size, run time and its requests' queue waits are added."""
        self.name = name
        self.eager = eager
        self.runtime = runtime
        self.crowded_runtime = crowded_runtime or runtime
        self._running = 0
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_images = max_queue_images
        self._metrics = metrics
        self.statistics = statistics
        self._queue: collections.deque[_Chunk] = collections.deque()
        self._queued_images = 0
        self._condition = threading.Condition()
        self._closed = False
        self._failure: str | None = None
        metrics.queue_depth.labels(name).set_function(lambda: self._queued_images)
        metrics.queue_capacity.labels(name).set(max_queue_images)
        self._gathering = threading.Lock()
        self._workers = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True) for i in range(instances)
        ]
        for worker in self._workers:
            worker.start()

    def run(self, inputs: Tensors) -> Tensors:
        """Runs inputs (same leading batch dimension) through the runtime, batched with other callers'."""
        with self.admit(len(next(iter(inputs.values())))) as admission:
            return admission.run(inputs)

    def admit(self, images: int) -> Admission:
        """Room for `images` in the queue, held until they are queued (or the admission is left unused);
        UNAVAILABLE at once when the model is overloaded, shutting down or broken; Cancelled when the caller has
        gone."""
        cancellation.check()
        if images > self.max_queue_images:
            raise InvalidArgument(
                f"{images} images in one call (after test-time augmentation) exceed model "
                f"{self.name}'s queue of {self.max_queue_images}; send fewer images per request"
            )
        with self._condition:
            self._check_running()
            if self._queued_images + images > self.max_queue_images:
                raise Unavailable(
                    f"model {self.name} is overloaded ({self._queued_images} images queued, limit "
                    f"{self.max_queue_images}); retry with backoff"
                )
            self._queued_images += images
        return Admission(self, images)

    def _check_running(self) -> None:
        if self._failure is not None:
            raise Unavailable(f"model {self.name} cannot run: {self._failure}")
        if self._closed:
            raise Unavailable(f"model {self.name} is shutting down; retry on another replica")

    def _release(self, images: int) -> None:
        with self._condition:
            self._queued_images -= images
            self._condition.notify()  # a batch waiting for these images need not

    def _enqueue(self, admission: Admission, groups: list[Tensors]) -> list[Tensors]:
        sizes = [len(next(iter(inputs.values()))) for inputs in groups]
        if sum(sizes) != admission.images:
            raise ValueError(f"{sum(sizes)} images to run on an admission for {admission.images}")
        step = self.max_batch_size
        chunked = [
            [
                _Chunk(
                    {k: v[i : i + step] for k, v in inputs.items()},
                    min(step, size - i),
                    tuple((k, v.shape[1:]) for k, v in inputs.items()),
                )
                for i in range(0, size, step)
            ]
            for inputs, size in zip(groups, sizes, strict=True)
        ]
        chunks = [chunk for group in chunked for chunk in group]
        with self._condition:
            self._check_running()
            self._queue.extend(chunks)
            admission.queued = True
            self._condition.notify()
        cancellation.attach([chunk.result for chunk in chunks])  # a caller that goes drops what has not run
        try:
            results = [[chunk.result.result() for chunk in group] for group in chunked]
        except CancelledError as err:
            raise Cancelled("the caller cancelled the call or its deadline passed") from err
        return [
            parts[0] if len(parts) == 1 else {name: np.concatenate([r[name] for r in parts]) for name in parts[0]}
            for parts in results
        ]

    def idle(self) -> bool:
        """No request admitted, queued or running."""
        with self._condition:
            return self._queued_images == 0 and self._running == 0

    def close(self, forget_metrics: bool = True) -> None:
        """Finishes the queued work, then stops the workers; forget_metrics drops every series of its model label
        (not when a reloaded copy of the model serves on under the same label)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for worker in self._workers:
            worker.join()
        if forget_metrics:
            m = self._metrics
            for family in (m.queue_depth, m.queue_capacity, m.batch_size, m.dropped_images, m.queue_wait_seconds):
                family.remove(self.name)
            m.inference_seconds.remove(self.name)
            for when in UNCLAIMED:
                m.unclaimed_images.remove(self.name, when)

    def _work(self) -> None:
        batch: list[_Chunk] | None = []
        try:
            while True:
                with self._gathering:
                    batch = self._next_batch()
                if batch is None:
                    break
                if batch:  # empty when every chunk taken had been cancelled
                    self._run_batch(batch)
        except BaseException as err:
            log.exception("batcher worker died", extra=fields(model=self.name))
            with self._condition:
                self._failure = f"its inference worker died ({err!r})"
                pending = [c for c in batch or [] if not c.result.done()] + list(self._queue)
                self._queue.clear()
            for chunk in pending:
                chunk.result.set_exception(Unavailable(f"model {self.name} cannot run: {self._failure}"))

    def _next_batch(self) -> list[_Chunk] | None:
        """Blocks for the first chunk, then gathers more until the batch is full, its delay is up, or (eager) no
        other request is admitted (counted in _queued_images while it decodes) to fill it. Chunks stay cancellable
        until the batch starts: those whose caller has gone by then are dropped, never inferred."""
        with self._condition:
            while not self._queue:
                if self._closed:
                    return None
                self._condition.wait()
            deadline = self._queue[0].enqueued + self.max_delay_s
            batch: list[_Chunk] = []
            while True:
                batch = [chunk for chunk in batch if not (chunk.result.cancelled() and self._drop(chunk))]
                size = sum(chunk.size for chunk in batch)
                while (
                    self._queue
                    and size + self._queue[0].size <= self.max_batch_size
                    and (not batch or self._queue[0].shape == batch[0].shape)
                ):
                    chunk = self._queue.popleft()
                    if not (chunk.result.cancelled() and self._drop(chunk)):
                        batch.append(chunk)
                        size += chunk.size
                if not batch and not self._queue:
                    return []  # every chunk taken had been cancelled: wait for a first one again
                remaining = deadline - time.monotonic()
                alone = self.eager and self._queued_images - size <= 0  # the queue is empty here
                if self._queue or size == self.max_batch_size or remaining <= 0 or alone or self._closed:
                    # From here a caller that goes is answered Cancelled, but its images are inferred.
                    running = [c for c in batch if c.result.set_running_or_notify_cancel() or not self._drop(c)]
                    self._queued_images -= sum(chunk.size for chunk in running)  # a filling batch's count as waiting
                    return running
                self._condition.wait(remaining)

    def _drop(self, chunk: _Chunk) -> bool:
        """Takes the images of a chunk whose caller has gone off the queue's count (under the condition); True."""
        self._queued_images -= chunk.size
        self._metrics.dropped_images.labels(self.name).inc(chunk.size)
        return True

    def _run_batch(self, batch: list[_Chunk]) -> None:
        started, started_ns = time.monotonic(), time.time_ns()
        for chunk in batch:
            self._metrics.queue_wait_seconds.labels(self.name).observe(started - chunk.enqueued)
        inputs = (
            batch[0].inputs
            if len(batch) == 1
            else {name: np.concatenate([chunk.inputs[name] for chunk in batch]) for name in batch[0].inputs}
        )
        with self._condition:
            runtime = self.runtime if self._running == 0 else self.crowded_runtime
            self._running += 1
        try:
            outputs = runtime.run(inputs)
        except Exception as err:
            log.exception("inference failed", extra=fields(model=self.name))
            for chunk in batch:
                chunk.result.set_exception(Internal(f"inference failed on model {self.name}: {err}"))
            return
        finally:
            with self._condition:
                self._running -= 1
        size = sum(chunk.size for chunk in batch)
        seconds = time.monotonic() - started
        self._metrics.batch_size.labels(self.name).observe(size)
        self._metrics.inference_seconds.labels(self.name).observe(seconds)
        if self.statistics is not None:
            self.statistics.batch(size, seconds, [started - chunk.enqueued for chunk in batch])
        ended_ns = time.time_ns()
        for chunk in batch:
            enqueued_ns = started_ns - int((started - chunk.enqueued) * 1e9)  # spans take wall-clock times
            tracing.record("queue", chunk.trace, enqueued_ns, started_ns)
            tracing.record("inference", chunk.trace, started_ns, ended_ns, images=chunk.size, batch_images=size)
        for chunk in batch:
            if chunk.call is not None and chunk.call.cancelled:
                when = UNCLAIMED[0] if chunk.call.cancelled_at < started else UNCLAIMED[1]
                self._metrics.unclaimed_images.labels(self.name, when).inc(chunk.size)
        offset = 0
        for chunk in batch:
            chunk.result.set_result({k: v[offset : offset + chunk.size] for k, v in outputs.items()})
            offset += chunk.size
