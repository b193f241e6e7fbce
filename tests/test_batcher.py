"""The dynamic batcher over a real onnxruntime session of a tiny graph (y = 2x). Tests order events with gates and
polling, never with the clock; the deadlines below only bound a failure."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from offshelf.service import cancellation
from offshelf.service.errors import Cancelled, Internal, Unavailable
from offshelf.service.metrics import Metrics
from offshelf.service.models.batcher import Batcher
from offshelf.service.models.runtime import OnnxRuntime

from common import until

DEADLINE = 60  # seconds; generous, so a loaded machine only makes a failure slower to report


@pytest.fixture(scope="module")
def doubling_runtime(tmp_path_factory) -> OnnxRuntime:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    path = tmp_path_factory.mktemp("tiny") / "double.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    runtime = OnnxRuntime(path, "cpu")
    runtime.load()
    return runtime


class GatedRuntime:
    """Holds every run until the gate opens, so a test decides when the worker is busy."""

    def __init__(self, runtime: OnnxRuntime, failure: BaseException | None = None):
        self.runtime = runtime
        self.gate = threading.Event()
        self.failure = failure
        self.started = threading.Event()

    def run(self, batch):
        self.started.set()
        self.gate.wait(DEADLINE)
        if self.failure is not None:
            raise self.failure
        return self.runtime.run(batch)


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start * 3, (start + count) * 3, dtype=np.float32).reshape(count, 3)}


def batch_sizes(metrics: Metrics) -> tuple[float, float]:
    """(number of batches, images in them)."""
    return (
        metrics.registry.get_sample_value("offshelf_batch_size_images_count", {"model": "m"}) or 0,
        metrics.registry.get_sample_value("offshelf_batch_size_images_sum", {"model": "m"}) or 0,
    )


def run_for(call: cancellation.Call, batcher: Batcher, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """batcher.run on behalf of a call that may go (cancellation's context, as the interceptor sets it)."""
    token = cancellation.current.set(call)
    try:
        return batcher.run(batch)
    finally:
        cancellation.current.reset(token)


def test_a_large_request_is_split_into_batches_and_reassembled_in_order(doubling_runtime):
    metrics = Metrics()
    batcher = Batcher("m", doubling_runtime, max_batch_size=4, max_delay_s=0, max_queue_images=100, metrics=metrics)
    result = batcher.run(rows(0, 10))["y"]
    np.testing.assert_array_equal(result, 2 * rows(0, 10)["x"])
    assert batch_sizes(metrics) == (3, 10)
    batcher.close()


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(doubling_runtime):
    metrics = Metrics()
    gated = GatedRuntime(doubling_runtime)
    batcher = Batcher("m", gated, max_batch_size=8, max_delay_s=0, max_queue_images=100, metrics=metrics)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(batcher.run, rows(100, 1))
        until(gated.started.is_set)  # the worker holds request 100 alone
        others = [pool.submit(batcher.run, rows(i * 2, 2)) for i in range(4)]
        until(lambda: batcher._queued_images == 8)
        gated.gate.set()
        np.testing.assert_array_equal(first.result()["y"], 2 * rows(100, 1)["x"])
        for i, future in enumerate(others):
            np.testing.assert_array_equal(future.result()["y"], 2 * rows(i * 2, 2)["x"])
    assert batch_sizes(metrics) == (2, 9)  # one batch of 1, then the four requests of 2 as one batch of 8
    batcher.close()


def test_a_full_queue_answers_unavailable_at_once(doubling_runtime):
    gated = GatedRuntime(doubling_runtime)
    batcher = Batcher("m", gated, max_batch_size=2, max_delay_s=0, max_queue_images=4, metrics=Metrics())
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(batcher.run, rows(0, 2))
        until(gated.started.is_set)
        queued = pool.submit(batcher.run, rows(2, 4))
        until(lambda: batcher._queued_images == 4)
        with pytest.raises(Unavailable, match="overloaded .4 images queued, limit 4.; retry with backoff"):
            batcher.run(rows(6, 1))
        assert not running.done()  # refused while the worker was still held: it did not wait for room
        gated.gate.set()
        assert running.result()["y"].shape == (2, 3) and queued.result()["y"].shape == (4, 3)
    batcher.close()


def test_an_inference_error_fails_its_batch_only(doubling_runtime):
    batcher = Batcher("m", doubling_runtime, max_batch_size=4, max_delay_s=0, max_queue_images=100, metrics=Metrics())
    with pytest.raises(Internal, match="inference failed on model m"):
        batcher.run({"x": np.zeros((1, 5), np.float32)})  # wrong width for the graph
    np.testing.assert_array_equal(batcher.run(rows(0, 1))["y"], 2 * rows(0, 1)["x"])
    batcher.close()


def test_a_dead_worker_fails_every_pending_and_later_request(doubling_runtime):
    gated = GatedRuntime(doubling_runtime, failure=SystemExit("worker killed"))
    batcher = Batcher("m", gated, max_batch_size=2, max_delay_s=0, max_queue_images=100, metrics=Metrics())
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(batcher.run, rows(0, 2))
        until(gated.started.is_set)
        queued = pool.submit(batcher.run, rows(2, 2))
        until(lambda: batcher._queued_images == 2)
        gated.gate.set()
        for future in (in_flight, queued):
            with pytest.raises(Unavailable, match="inference worker died"):
                future.result(DEADLINE)
    with pytest.raises(Unavailable, match="inference worker died"):
        batcher.run(rows(0, 1))


def test_close_finishes_queued_work_then_refuses(doubling_runtime):
    gated = GatedRuntime(doubling_runtime)
    batcher = Batcher("m", gated, max_batch_size=2, max_delay_s=0, max_queue_images=100, metrics=Metrics())
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.run, rows(i * 2, 2)) for i in range(3)]
        until(lambda: gated.started.is_set() and batcher._queued_images == 4)  # one running, two queued
        closing = pool.submit(batcher.close)
        until(lambda: batcher._closed)
        gated.gate.set()
        closing.result(DEADLINE)
        assert all(f.result()["y"].shape == (2, 3) for f in futures)
    with pytest.raises(Unavailable, match="shutting down"):
        batcher.run(rows(0, 1))


def test_the_chunks_of_a_caller_that_went_are_dropped_and_the_worker_goes_on(doubling_runtime):
    metrics = Metrics()
    gated = GatedRuntime(doubling_runtime)
    batcher = Batcher("m", gated, max_batch_size=2, max_delay_s=0, max_queue_images=100, metrics=metrics)
    call = cancellation.Call()

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.run, rows(0, 2))
        until(gated.started.is_set)  # the worker holds the first batch
        gone = pool.submit(run_for, call, batcher, rows(10, 2))
        until(lambda: batcher._queued_images == 2)
        call.cancel()  # the caller goes while its chunk waits
        gated.gate.set()
        with pytest.raises(Cancelled):
            gone.result()
        assert first.result()["y"].shape == (2, 3)
        assert batcher.run(rows(20, 2))["y"].shape == (2, 3)  # the worker goes on
    assert batch_sizes(metrics) == (2, 4)  # the cancelled chunk never ran
    batcher.close()


def test_a_lone_request_runs_at_once_and_one_on_the_way_is_waited_for(doubling_runtime):
    """Eager batching: with a 60 s delay, a request alone is not kept waiting for company (it was, for the whole
    delay); a batch waits only for requests admitted and still decoding, and takes them in."""
    metrics = Metrics()
    batcher = Batcher("m", doubling_runtime, max_batch_size=8, max_delay_s=60, max_queue_images=100, metrics=metrics)
    started = time.monotonic()
    np.testing.assert_array_equal(batcher.run(rows(0, 1))["y"], 2 * rows(0, 1)["x"])
    assert time.monotonic() - started < DEADLINE / 2  # not the 60 s delay
    with ThreadPoolExecutor(1) as pool, batcher.admit(2) as decoding:  # a request on the way, still decoding
        queued = pool.submit(batcher.run, rows(1, 1))
        until(lambda: batcher._queued_images == 3)
        assert not queued.done()  # its batch waits for the one on the way
        np.testing.assert_array_equal(decoding.run(rows(2, 2))["y"], 2 * rows(2, 2)["x"])
        np.testing.assert_array_equal(queued.result(DEADLINE)["y"], 2 * rows(1, 1)["x"])
    assert batch_sizes(metrics) == (2, 4)  # the lone one, then 1 + 2 together
    batcher.close()


def test_without_eager_batching_a_lone_request_waits_for_its_batch_to_fill(doubling_runtime):
    metrics = Metrics()
    batcher = Batcher("m", doubling_runtime, 8, max_delay_s=60, max_queue_images=100, metrics=metrics, eager=False)
    with ThreadPoolExecutor(1) as pool:
        lone = pool.submit(batcher.run, rows(0, 1))
        until(lambda: batcher._queued_images == 1)
        time.sleep(0.2)
        assert not lone.done()  # waiting for company, up to 60 s
        np.testing.assert_array_equal(batcher.run(rows(1, 7))["y"], 2 * rows(1, 7)["x"])  # fills the batch
        np.testing.assert_array_equal(lone.result(DEADLINE)["y"], 2 * rows(0, 1)["x"])
    assert batch_sizes(metrics) == (1, 8)
    batcher.close()


def test_instances_run_batches_at_once(doubling_runtime):
    """With two instances, two full batches run together: each run waits at a barrier for the other (with one
    instance the barrier breaks and both fail)."""

    class BothAtOnce:
        def __init__(self) -> None:
            self.barrier = threading.Barrier(2, timeout=DEADLINE)

        def run(self, batch):
            self.barrier.wait()
            return doubling_runtime.run(batch)

    batcher = Batcher("m", BothAtOnce(), 2, max_delay_s=0, max_queue_images=100, metrics=Metrics(), instances=2)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.run, rows(2 * i, 2)) for i in range(2)]
        for i, future in enumerate(futures):
            np.testing.assert_array_equal(future.result(DEADLINE)["y"], 2 * rows(2 * i, 2)["x"])
    batcher.close()


def test_a_batch_that_starts_while_another_runs_takes_the_crowded_runtime(doubling_runtime):
    """The alone runtime has every core's threads; a batch that starts while it runs gets the crowded one (its
    share of the cores), and the next batch alone gets every core again."""
    alone = GatedRuntime(doubling_runtime)
    crowded_runs = []

    class Crowded:
        def run(self, batch):
            crowded_runs.append(len(batch["x"]))
            return doubling_runtime.run(batch)

    metrics = Metrics()
    batcher = Batcher("m", alone, 2, 0, max_queue_images=100, metrics=metrics, instances=2, crowded_runtime=Crowded())
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.run, rows(0, 2))
        until(alone.started.is_set)  # held in the alone runtime
        np.testing.assert_array_equal(batcher.run(rows(2, 2))["y"], 2 * rows(2, 2)["x"])  # while the first runs
        assert crowded_runs == [2]
        alone.gate.set()
        np.testing.assert_array_equal(first.result(DEADLINE)["y"], 2 * rows(0, 2)["x"])
    batcher.run(rows(4, 1))
    assert crowded_runs == [2] and batch_sizes(metrics) == (3, 5)
    batcher.close()


def test_inputs_of_different_shapes_never_share_a_batch(tmp_path):
    """Images kept whole differ in size: a batch takes queued chunks of its first chunk's shape only, in order."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double-any",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    runtime = OnnxRuntime(tmp_path / "m.onnx", "cpu")
    runtime.load()
    metrics, gated = Metrics(), GatedRuntime(runtime)
    batcher = Batcher("m", gated, max_batch_size=8, max_delay_s=0, max_queue_images=100, metrics=metrics)
    wide, narrow = np.ones((2, 5), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.run, {"x": narrow})
        until(gated.started.is_set)  # the worker is busy: what follows queues up
        with batcher.admit(5) as admission:
            mixed = pool.submit(admission.run_groups, [{"x": narrow}, {"x": wide[:1]}, {"x": narrow}])
            until(lambda: len(batcher._queue) == 3)
            gated.gate.set()
            results = mixed.result(DEADLINE)
        np.testing.assert_array_equal(first.result()["y"], 2 * narrow)
    assert [r["y"].tolist() for r in results] == [(2 * narrow).tolist(), [[2.0] * 5], (2 * narrow).tolist()]
    assert batch_sizes(metrics) == (4, 7)  # narrow, then narrow | wide | narrow: a shape change ends a batch
    batcher.close()


def test_a_chunk_whose_caller_goes_while_its_batch_fills_is_never_inferred(doubling_runtime):
    """A batch waiting to fill holds its chunks cancellable until it starts: the caller of the first chunk goes while
    the batch waits for company, and only the next caller's images run (the gone one's ran alone before)."""
    metrics = Metrics()
    batcher = Batcher("m", doubling_runtime, 4, max_delay_s=60, max_queue_images=100, metrics=metrics, eager=False)
    call = cancellation.Call()

    with ThreadPoolExecutor(1) as pool:
        gone = pool.submit(run_for, call, batcher, rows(0, 1))
        until(lambda: batcher._queued_images == 1 and not batcher._queue)  # in the batch that fills
        call.cancel()
        with pytest.raises(Cancelled):
            gone.result(DEADLINE)
        np.testing.assert_array_equal(batcher.run(rows(1, 4))["y"], 2 * rows(1, 4)["x"])
    assert batch_sizes(metrics) == (1, 4)
    assert metrics.registry.get_sample_value("offshelf_dropped_images_total", {"model": "m"}) == 1
    batcher.close()


def test_images_inferred_for_a_caller_that_went_while_its_batch_ran_are_counted_unclaimed(doubling_runtime):
    metrics = Metrics()
    gated = GatedRuntime(doubling_runtime)
    batcher = Batcher("m", gated, max_batch_size=2, max_delay_s=0, max_queue_images=100, metrics=metrics)
    call = cancellation.Call()

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_for, call, batcher, rows(0, 2))
        until(gated.started.is_set)
        call.cancel()  # too late to drop: the batch runs
        gated.gate.set()
        assert running.result(DEADLINE)["y"].shape == (2, 3)
    unclaimed = "offshelf_unclaimed_images_total"
    assert metrics.registry.get_sample_value(unclaimed, {"model": "m", "when": "running"}) == 2
    assert metrics.registry.get_sample_value(unclaimed, {"model": "m", "when": "queued"}) is None
    batcher.close()


def test_closing_forgets_every_series_of_the_batcher(doubling_runtime):
    """A retired model version leaves no series behind (they stayed, one set per version ever served)."""
    metrics = Metrics()
    batcher = Batcher("m", doubling_runtime, max_batch_size=2, max_delay_s=0, max_queue_images=100, metrics=metrics)
    batcher.run(rows(0, 2))
    batcher.close()
    left = [s for f in metrics.registry.collect() for s in f.samples if s.labels.get("model") == "m"]
    assert left == []
