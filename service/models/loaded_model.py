"""One served model version (LoadedModel): its card, preprocessor, two graphs behind the Runtime seam with their
batchers, statistics; embed() for encoded images, infer() for OIP tensors; drained and closed when retired."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import time
from collections.abc import Iterator

import numpy as np
import onnx
from google.protobuf import json_format

from offshelf.protos.v1 import model_card_pb2 as card_pb2
from offshelf.service import cancellation, request_context, tracing
from offshelf.service.errors import (
    DecodeError,
    InvalidArgument,
    ModelLoadError,
)
from offshelf.service.metrics import Metrics
from offshelf.service.models.batcher import Admission, Batcher
from offshelf.service.models.binding import Binding
from offshelf.service.models.pixels_input import PIXELS, with_pixels_input
from offshelf.service.models.preprocess import PixelBudget, Preprocessor, input_size
from offshelf.service.models.runtime import CPU, OnnxRuntime
from offshelf.service.models.statistics import InferenceStatistics
from offshelf.service.settings import ServiceSettings

log = logging.getLogger(__name__)
RETIRE_SETTLE_SECONDS = 0.5


def read_card(version_dir: pathlib.Path) -> card_pb2.ModelCard:
    try:
        return json_format.Parse((version_dir / "card.json").read_text(), card_pb2.ModelCard())
    except (OSError, json_format.ParseError) as err:
        raise ModelLoadError(f"{version_dir}: unreadable card.json ({err}); re-export the model") from err


class RequestTiming:
    """When a request to a model started, and how long it decoded."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.decoding = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def decoded(self) -> None:
        self.decoding = self.elapsed()


class LoadedModel:
    """One model version: its card, preprocessor, and two graphs with their batchers: the exported one, whose FP32
    input takes preprocessed tensors (OIP FP32; a batch at a time), and the same with uint8 pixels in (Embed, OIP
    BYTES and UINT8, heads; `instances` batches at once, on a second session with a share of the cores for a batch
    that starts while another runs)."""

    def __init__(
        self, version_dir: pathlib.Path, settings: ServiceSettings, metrics: Metrics, budget: PixelBudget | None = None
    ):
        self.card = read_card(version_dir)
        self.name = version_dir.parent.name
        self.version = int(version_dir.name)
        self.settings = settings  # the server's, with the model's serving.json applied
        self.statistics = InferenceStatistics()
        self._metrics = metrics
        self.output_names = [o.name for o in self.card.outputs]
        try:
            self.preprocessor = Preprocessor(self.card.preprocessing, settings.max_image_pixels, budget)
        except ValueError as err:
            raise ModelLoadError(f"{version_dir}: bad preprocessing in card.json: {err}") from err
        path = version_dir / "model.onnx"

        def runtime(threads: int, graph: bytes | None = None) -> OnnxRuntime:
            loaded = OnnxRuntime(path, settings.execution_provider, threads, graph, settings.intra_op_spinning)
            loaded.load()
            return loaded

        self.runtime = runtime(settings.intra_op_threads)
        self._check_outputs()
        try:
            pixels_graph = with_pixels_input(path, self.card.preprocessing)
        except (ValueError, onnx.checker.ValidationError) as err:
            raise ModelLoadError(f"{path}: cannot put a uint8 pixels input in front of its graph: {err}") from err
        self.pixels_runtime = runtime(settings.intra_op_threads, pixels_graph)
        # With several instances, a batch that starts while another runs gets its share of the cores, not all.
        cores = settings.intra_op_threads or os.cpu_count() or 1
        share = max(1, cores // settings.instances)
        # FP32 tensors (OIP clients that preprocess) are the rarer path: one session, one batch at a time (each
        # session costs ~170 MB for Lite0).
        on_cpu = self.pixels_runtime.provider == CPU  # CUDA runs do not share the CPU's cores
        crowded_pixels_runtime = runtime(share, pixels_graph) if on_cpu and share < cores else self.pixels_runtime
        self._runtimes = list(dict.fromkeys([self.runtime, self.pixels_runtime, crowded_pixels_runtime]))
        self._warm_up(settings.max_batch_size)

        def batcher(name: str, alone: OnnxRuntime, crowded: OnnxRuntime, instances: int) -> Batcher:
            return Batcher(
                name,
                alone,
                settings.max_batch_size,
                settings.max_batch_delay_ms / 1000,
                settings.max_queue_images,
                metrics,
                settings.eager_batching,
                instances,
                crowded,
                self.statistics,
            )

        name = f"{self.name}/{self.version}"
        self.batcher = batcher(name, self.pixels_runtime, crowded_pixels_runtime, settings.instances)
        self.tensor_batcher = batcher(f"{name}/fp32", self.runtime, self.runtime, 1)
        metrics.models.labels(self.name, str(self.version), self.runtime.provider).set(1)

    def _check_outputs(self) -> None:
        graph_outputs = {o.name for o in self.runtime.session.get_outputs()}
        missing = [name for name in self.output_names if name not in graph_outputs]
        if missing:
            raise ModelLoadError(f"{self.runtime.path}: card.json lists outputs {missing} that the ONNX graph lacks")

    def _warm_up(self, max_batch_size: int) -> None:
        """Runs batch sizes 1 and max once through every runtime, so the first requests do not pay for allocations."""
        pre = self.card.preprocessing
        height, width = input_size(pre)
        if height < 0:  # an image kept whole: warm up at S x S
            height = width = pre.resize_shorter
        for size in sorted({1, max_batch_size}):
            for runtime in self._runtimes:
                if runtime.graph is None:  # the exported graph: FP32 in
                    runtime.run({pre.input_name: np.zeros((size, 3, height, width), np.float32)})
                else:
                    runtime.run({PIXELS: np.zeros((size, height, width, 3), np.uint8)})

    def check_outputs(self, requested: list[str]) -> list[str]:
        """The requested outputs (all when none are named); InvalidArgument names unknown ones."""
        unknown = [name for name in requested if name not in self.output_names]
        if unknown:
            raise InvalidArgument(
                f"model {self.name} version {self.version} has no output {unknown[0]!r}; "
                f"its outputs are: {', '.join(self.output_names)}"
            )
        return list(dict.fromkeys(requested)) or self.output_names

    def embed(
        self, images: list[bytes], augmentation: int = 0, names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Every output of the model for each image, as (len(images), dim) arrays.

        augmentation: an Augmentation; each output is then the mean over the image's views.
        names: what error messages call each image (default "image <i>").
        """
        names = names or [f"image {i}" for i in range(len(images))]
        per_image = self.preprocessor.views_per_image(augmentation)
        with self._request(len(images)) as timing:
            with self.batcher.admit(len(images) * per_image) as admission:  # refused before decoding if overloaded
                views = []
                with tracing.tracer.start_as_current_span("decode", attributes={"images": len(images)}):
                    for position, (data, name) in enumerate(zip(images, names, strict=True)):
                        cancellation.check()  # a caller that has gone costs no more decoding
                        try:
                            views += self.preprocessor.views_of(data, name, augmentation)
                        except DecodeError as err:
                            err.item = position
                            raise
                timing.decoded()
                outputs = self._run_views(admission, views)
        if per_image > 1:
            outputs = {name: a.reshape(len(images), per_image, -1).mean(axis=1) for name, a in outputs.items()}
        return outputs

    @staticmethod
    def _run_views(admission: Admission, views: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Every output for each view, in order; views of one shape go as one group (images kept whole differ)."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, view in enumerate(views):
            by_shape.setdefault(view.shape, []).append(i)
        if len(by_shape) == 1:
            return admission.run({PIXELS: np.stack(views)})
        groups = admission.run_groups([{PIXELS: np.stack([views[i] for i in group])} for group in by_shape.values()])
        outputs = {name: np.empty((len(views), *a.shape[1:]), a.dtype) for name, a in groups[0].items()}
        for positions, result in zip(by_shape.values(), groups, strict=True):
            for name, array in result.items():
                outputs[name][positions] = array
        return outputs

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a preprocessed (images, 3, H, W) FP32 batch (OIP tensors; batched with each other, while
        encoded images from Embed and OIP are batched together through embed())."""
        return self._counted(self.tensor_batcher, {self.card.preprocessing.input_name: batch})

    def infer_pixels(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a (images, H, W, 3) uint8 batch of decoded crops, batched with Embed's images."""
        return self._counted(self.batcher, {PIXELS: batch})

    def _counted(self, batcher: Batcher, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._request(len(next(iter(inputs.values())))):
            return batcher.run(inputs)

    @contextlib.contextmanager
    def _request(self, images: int) -> Iterator[RequestTiming]:
        """One request to this model version: noted for the call's access log, counted in its statistics (success
        or failure, its time, and the decoding part of it)."""
        request_context.note_model(self.name, images)
        timing = RequestTiming()
        try:
            yield timing
        except BaseException:
            self.statistics.request(False, timing.elapsed(), timing.decoding)
            raise
        self.statistics.request(True, timing.elapsed(), timing.decoding)

    def binding(self, output: str) -> Binding:
        """What vectors of this output are: the binding a collection records and checks."""
        spec = next(o for o in self.card.outputs if o.name == output)
        digest = hashlib.sha256(self.card.preprocessing.SerializeToString(deterministic=True)).hexdigest()
        return Binding(
            model=self.name,
            version=self.version,
            output=output,
            pooling=spec.pooling,
            preprocessing_hash=digest,
            dim=spec.dim,
        )

    def close(self, forget_metrics: bool = True) -> None:
        """Finishes the queued work and frees the sessions. forget_metrics: drop this version's gauges (not when a
        reloaded copy of it serves on under the same labels)."""
        self.batcher.close(forget_metrics)
        self.tensor_batcher.close(forget_metrics)
        for runtime in self._runtimes:
            runtime.close()
        if forget_metrics:
            self._metrics.models.remove(self.name, str(self.version), self.runtime.provider)

    def drain(self, grace_seconds: float) -> None:
        """Returns once no request is admitted, queued or running, or after grace_seconds: for a version just taken
        out of the registry, so that the requests it has already accepted finish before it closes."""
        deadline = time.monotonic() + grace_seconds
        time.sleep(min(RETIRE_SETTLE_SECONDS, grace_seconds))  # a request that got the model just before is admitted
        while time.monotonic() < deadline and not (self.batcher.idle() and self.tensor_batcher.idle()):
            time.sleep(0.05)
