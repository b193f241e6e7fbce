"""The model registry: every version of every model in the repository, loaded, warmed up and batched."""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
from google.protobuf import json_format

from offshelf.protos.v1 import index_pb2
from offshelf.protos.v1 import model_card_pb2 as card_pb2
from offshelf.service import cancellation
from offshelf.service.errors import FailedPrecondition, InvalidArgument, ModelLoadError, NotFound, Unavailable
from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics
from offshelf.service.models.batcher import Batcher
from offshelf.service.models.pixels_input import PIXELS, with_pixels_input
from offshelf.service.models.preprocess import PixelBudget, Preprocessor
from offshelf.service.models.priority import lower_this_thread
from offshelf.service.models.runtime import CPU, OnnxRuntime
from offshelf.service.settings import ServiceSettings

log = logging.getLogger(__name__)


def describe(binding: index_pb2.Binding) -> str:
    return (
        f"{binding.model} v{binding.version} output {binding.output!r} ({binding.dim}-d, {binding.pooling} "
        f"pooling, preprocessing {binding.preprocessing_hash[:12]})"
    )


def read_card(version_dir: pathlib.Path) -> card_pb2.ModelCard:
    try:
        return json_format.Parse((version_dir / "card.json").read_text(), card_pb2.ModelCard())
    except (OSError, json_format.ParseError) as err:
        raise ModelLoadError(f"{version_dir}: unreadable card.json ({err}); re-export the model") from err


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
        for size in sorted({1, max_batch_size}):
            for runtime in self._runtimes:
                if runtime.graph is None:  # the exported graph: FP32 in
                    runtime.run({pre.input_name: np.zeros((size, 3, pre.crop_height, pre.crop_width), np.float32)})
                else:
                    runtime.run({PIXELS: np.zeros((size, pre.crop_height, pre.crop_width, 3), np.uint8)})

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
        with self.batcher.admit(len(images) * per_image) as admission:  # refused before decoding when overloaded
            views = []
            for data, name in zip(images, names, strict=True):
                cancellation.check()  # a caller that has gone costs no more decoding
                views += self.preprocessor.views_of(data, name, augmentation)
            outputs = admission.run({PIXELS: np.stack(views)})
        if per_image > 1:
            outputs = {name: a.reshape(len(images), per_image, -1).mean(axis=1) for name, a in outputs.items()}
        return outputs

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a preprocessed (images, 3, H, W) FP32 batch (OIP tensors; batched with each other, while
        encoded images from Embed and OIP are batched together through embed())."""
        return self.tensor_batcher.run({self.card.preprocessing.input_name: batch})

    def infer_pixels(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a (images, H, W, 3) uint8 batch of decoded crops, batched with Embed's images."""
        return self.batcher.run({PIXELS: batch})

    def binding(self, output: str) -> index_pb2.Binding:
        """What vectors of this output are: the binding a collection records and checks."""
        spec = next(o for o in self.card.outputs if o.name == output)
        digest = hashlib.sha256(self.card.preprocessing.SerializeToString(deterministic=True)).hexdigest()
        return index_pb2.Binding(
            model=self.name,
            version=self.version,
            output=output,
            pooling=spec.pooling,
            preprocessing_hash=digest,
            dim=spec.dim,
        )

    def close(self) -> None:
        self.batcher.close()
        self.tensor_batcher.close()
        for runtime in self._runtimes:
            runtime.close()


class ModelRegistry:
    def __init__(self, settings: ServiceSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._lock = threading.Lock()
        self.decode_budget = PixelBudget(max(settings.max_decode_pixels, settings.max_image_pixels))

    def version_dirs(self) -> list[pathlib.Path]:
        repo = self.settings.repo
        if not repo.is_dir():
            raise ModelLoadError(
                f"model repository {repo} does not exist; export a model into it first "
                f"(offshelf export efficientnet-lite0 --repo {repo})"
            )
        found = sorted(
            (
                v
                for m in repo.iterdir()
                if m.is_dir() and not m.name.startswith(".")
                for v in m.iterdir()
                if v.is_dir() and v.name.isdigit()
            ),
            key=lambda v: (v.parent.name, int(v.name)),
        )
        if not found:
            raise ModelLoadError(
                f"model repository {repo} holds no <model>/<version>/ folder; "
                f"export a model into it (offshelf export efficientnet-lite0 --repo {repo})"
            )
        return found

    def load_all(self) -> None:
        """Loads every version in parallel; raises ModelLoadError if any cannot be served."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            for model in pool.map(self._load, self.version_dirs()):
                with self._lock:
                    self._models.setdefault(model.name, {})[model.version] = model

    def _load(self, version_dir: pathlib.Path) -> LoadedModel:
        """Runs on a loading thread of its own: its priority, lowered here, passes to the model's inference
        threads."""
        lower_this_thread(self.settings.inference_niceness)
        started = time.perf_counter()
        model = LoadedModel(version_dir, self.settings, self.metrics, self.decode_budget)
        log.info(
            "model loaded",
            extra=fields(
                model=model.name,
                version=model.version,
                provider=model.runtime.provider,
                seconds=round(time.perf_counter() - started, 2),
            ),
        )
        return model

    def get(self, name: str, version: int = 0) -> LoadedModel:
        with self._lock:
            versions = self._models.get(name)
            loaded = sorted(self._models)
        if not loaded:
            raise Unavailable("the server is still loading its models; retry when health reports SERVING")
        if versions is None:
            raise NotFound(f"no model named {name!r}; served models: {', '.join(loaded)}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise NotFound(
                f"model {name!r} has no version {version}; served versions: "
                f"{', '.join(map(str, sorted(versions)))} (or 0 for the latest)"
            )
        return versions[version]

    def for_binding(self, binding: index_pb2.Binding, owner: str) -> LoadedModel:
        """The served model whose output is exactly what `owner` (a collection or head) was built on."""
        try:
            model = self.get(binding.model, binding.version)
        except NotFound as err:
            raise FailedPrecondition(
                f"{owner} holds {describe(binding)}, which this server no longer serves; serve that model version again"
            ) from err
        served = model.binding(binding.output) if binding.output in model.output_names else None
        if served != binding:
            raise FailedPrecondition(
                f"{owner} holds {describe(binding)} but the server now serves "
                f"{describe(served) if served else 'no such output'} under that name"
            )
        return model

    def all(self) -> dict[str, list[LoadedModel]]:
        with self._lock:
            return {name: [versions[v] for v in sorted(versions)] for name, versions in sorted(self._models.items())}

    def close(self) -> None:
        with self._lock:
            models = [m for versions in self._models.values() for m in versions.values()]
            self._models.clear()
        for model in models:
            model.close()
