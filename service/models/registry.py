"""The model registry: the versions of the repository's models that are served, loaded, warmed up and batched."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf import json_format

from offshelf.protos.v1 import index_pb2
from offshelf.protos.v1 import model_card_pb2 as card_pb2
from offshelf.service import cancellation, request_context, tracing
from offshelf.service.errors import (
    DecodeError,
    FailedPrecondition,
    InvalidArgument,
    ModelLoadError,
    NotFound,
    Unavailable,
)
from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics
from offshelf.service.models.batcher import Admission, Batcher
from offshelf.service.models.pixels_input import PIXELS, with_pixels_input
from offshelf.service.models.preprocess import PixelBudget, Preprocessor, input_size
from offshelf.service.models.priority import lower_this_thread
from offshelf.service.models.runtime import CPU, OnnxRuntime
from offshelf.service.models.serving_config import SERVING_CONFIG, ServingConfig, read_serving_config
from offshelf.service.models.statistics import InferenceStatistics
from offshelf.service.settings import ServiceSettings

log = logging.getLogger(__name__)
RETIRE_SETTLE_SECONDS = 0.5


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


def incomplete(version_dir: pathlib.Path) -> str:
    """Why a version folder is not complete yet, "" when it is: model.onnx and card.json readable, card.json
    parsed. A folder being copied in file by file is left alone until then."""
    missing = [name for name in ("model.onnx", "card.json") if not os.access(version_dir / name, os.R_OK)]
    if missing:
        return (
            f"incomplete: no {' and no '.join(missing)} yet (a version is considered once model.onnx and card.json "
            "are both in place)"
        )
    try:
        read_card(version_dir)
    except ModelLoadError as err:
        return f"incomplete: {err}"
    return ""


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


@dataclass(frozen=True)
class VersionState:
    """A version's state as Triton's repository index reports it: READY, LOADING, UNLOADING or UNAVAILABLE."""

    state: str
    reason: str = ""


class ModelRegistry:
    """The served versions of the repository's models, kept in step with the repository.

    Each model serves the versions its version policy (serving.json) picks, plus any version a collection or head
    is bound to (`bound`), so that exporting version 2 does not break what was built on version 1. sync() (every
    repository_poll_seconds, and on RepositoryModelLoad) loads new versions, warmed up before they take traffic,
    reloads a model whose serving.json changed, and retires versions no longer wanted once their requests in
    flight finish. A model unloaded explicitly stays unloaded until it is loaded again.
    """

    def __init__(self, settings: ServiceSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.decode_budget = PixelBudget(max(settings.max_decode_pixels, settings.max_image_pixels))
        self.bound: Callable[[], set[tuple[str, int]]] = set  # (model, version) pairs to keep: set by the server
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._configs: dict[str, tuple[str, ServingConfig]] = {}  # by model: (serving.json stamp, config)
        self._config_errors: dict[str, tuple[str, str]] = {}  # by model: (serving.json stamp, why it is refused)
        self._overrides: dict[str, ServingConfig] = {}  # by model: a config given with RepositoryModelLoad
        self._failed: dict[tuple[str, int], tuple[tuple[int, str], str]] = {}  # (folder, config stamps), error
        self._changing: dict[tuple[str, int], str] = {}  # LOADING or UNLOADING
        self._unloaded: set[str] = set()
        self._lock = threading.Lock()  # the dicts above
        self._control = threading.Lock()  # one sync, load or unload at a time
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # --- the repository --------------------------------------------------------------------------

    def repository(self) -> dict[str, dict[int, str]]:
        """Every model folder of the repository with its version folders, each with "" when it can be loaded, else
        why it is left aside (incomplete, or a link out of the repository)."""
        repo = self.settings.repo
        if not repo.is_dir():
            raise ModelLoadError(
                f"model repository {repo} does not exist; export a model into it first "
                f"(offshelf export efficientnet-lite0 --repo {repo})"
            )
        models = {}
        for model in sorted(repo.iterdir()):
            if not model.is_dir() or model.name.startswith("."):
                continue
            versions = [v for v in model.iterdir() if v.is_dir() and v.name.isascii() and v.name.isdigit()]
            models[model.name] = {
                int(v.name): self.outside(model) or self.outside(v, v / "model.onnx", v / "card.json") or incomplete(v)
                for v in sorted(versions, key=lambda v: int(v.name))
            }
        return models

    def outside(self, *paths: pathlib.Path) -> str:
        """Why these paths of the repository are refused: one links outside it (unless that is allowed); else ""."""
        if self.settings.allow_links_outside_repo:
            return ""
        root = self.settings.repo.resolve()
        for path in paths:
            target = path.resolve()
            if not target.is_relative_to(root):
                return (
                    f"{path.relative_to(self.settings.repo)} links outside the repository (to {target}); move it "
                    "into the repository, or serve with --allow-links-outside-repo"
                )
        return ""

    def load_all(self) -> None:
        """The first load: raises ModelLoadError if any version the policies pick cannot be served. Folders left
        aside (incomplete, links out of the repository) are logged."""
        with self._control:
            repository = self.repository()
            aside = [f"{m}/{v}: {why}" for m, versions in repository.items() for v, why in versions.items() if why]
            for folder in aside:
                log.warning("model version left aside", extra=fields(folder=folder))
            if not any(why == "" for versions in repository.values() for why in versions.values()):
                raise ModelLoadError(
                    f"model repository {self.settings.repo} holds no complete <model>/<version>/ folder"
                    f"{' (' + '; '.join(aside) + ')' if aside else ''}; export a model into it "
                    f"(offshelf export efficientnet-lite0 --repo {self.settings.repo})"
                )
            self._sync(repository, list(repository), strict=True)

    def sync(self) -> None:
        """Brings the served versions in step with the repository; a version that fails to load is logged and
        reported UNAVAILABLE by the index (tried again when its folder or the model's config changes), the versions
        served before serving on."""
        with self._control:
            repository = self.repository()
            with self._lock:
                names = sorted((set(repository) | set(self._models)) - self._unloaded)
            self._sync(repository, names, strict=False)

    def poll(self, seconds: float) -> None:
        """Syncs every `seconds` in a thread of its own until close()."""

        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    self.sync()
                except Exception:
                    log.exception("syncing with the model repository failed")

        self._poller = threading.Thread(target=loop, name="repository-poll", daemon=True)
        self._poller.start()

    def load(self, name: str, override: ServingConfig | None = None) -> None:
        """Loads a model, or reloads it (its serving.json read again): RepositoryModelLoad. override: a config
        that replaces serving.json until the model is loaded again without one (Triton's config override)."""
        with self._control:
            repository = self.repository()
            if name not in repository:
                raise NotFound(f"no model folder {name!r} in the repository; models there: {', '.join(repository)}")
            with self._lock:
                self._unloaded.discard(name)
                self._configs.pop(name, None)
                self._config_errors.pop(name, None)
                previous = self._overrides.pop(name, None)
                if override is not None:
                    self._overrides[name] = override
                self._failed = {key: failure for key, failure in self._failed.items() if key[0] != name}
            try:
                self._sync(repository, [name], strict=True, reload=True)
            except ModelLoadError as err:
                with self._lock:  # the model serves on as before
                    self._overrides.pop(name, None)
                    if previous is not None:
                        self._overrides[name] = previous
                raise FailedPrecondition(f"model {name!r} did not load: {err}") from err
            with self._lock:
                loaded = bool(self._models.get(name))
            if not loaded:
                versions = ", ".join(f"{v} ({why})" if why else str(v) for v, why in repository[name].items())
                raise FailedPrecondition(
                    f"model {name!r} has no version folder its version policy picks (versions there: "
                    f"{versions or 'none'}); export one or change {name}/{SERVING_CONFIG}"
                )

    def unload(self, name: str) -> None:
        """Unloads every version of a model; each closes once its requests in flight finish."""
        with self._control:
            in_repository = name in self.repository()
            with self._lock:
                if name not in self._models and not in_repository:
                    raise NotFound(f"no model named {name!r}")
                self._unloaded.add(name)
                versions = self._models.pop(name, {})
            for model in versions.values():
                self._retire(model)
            log.info("model unloaded", extra=fields(model=name, versions=sorted(versions)))

    def _sync(
        self, repository: dict[str, dict[int, str]], names: list[str], strict: bool, reload: bool = False
    ) -> None:
        try:
            bound: set[tuple[str, int]] | None = self.bound()
        except Exception:  # Milvus unreachable, say: new versions still load, and nothing is unloaded
            log.exception("cannot list the model versions collections and heads are bound to")
            bound = None
        for name in names:
            try:
                config, changed, stamp = self._config(name, log_refusal=not strict)
            except ModelLoadError:
                if strict:
                    raise
                continue  # the model serves on as before
            with self._lock:
                loaded = dict(self._models.get(name, {}))
            # Complete folders count; a served version whose folder is being rewritten serves on meanwhile.
            folders = repository.get(name, {})
            present = {v for v, why in folders.items() if not why or (v in loaded and why.startswith("incomplete"))}
            kept = set(loaded) if bound is None else {v for m, v in bound if m == name}
            fresh = reload or changed
            failed = set() if strict else {v for v in present if self._failed_before(name, v, stamp)}
            picked = set(config.version_policy.choose(sorted(present)))
            tried: set[int] = set()
            while True:  # the policy picks among the versions that load: a version that fails makes it pick again
                wanted = set(config.version_policy.choose(sorted(present - failed))) | (kept & present)
                to_load = sorted(v for v in wanted - failed - tried if v not in loaded or (fresh and not folders[v]))
                if not to_load:
                    break
                tried.update(to_load)
                models, failures = self._load_versions(name, to_load, config, stamp, strict)
                failed |= failures
                for model in models:
                    with self._lock:
                        self._models.setdefault(name, {})[model.version] = model
                    if model.version in loaded:
                        self._retire(loaded.pop(model.version))
            with self._lock:
                served = set(self._models.get(name, {}))
            if picked - wanted and not wanted & served:
                continue  # what the policy picks does not load, and nothing it picks serves: the old versions stay
            gone = [loaded[v] for v in loaded if v not in wanted]
            with self._lock:
                for model in gone:
                    del self._models[name][model.version]
                if name in self._models and not self._models[name]:
                    del self._models[name]
            for model in gone:
                self._retire(model)

    def _config(self, name: str, log_refusal: bool) -> tuple[ServingConfig, bool, str]:
        """The model's serving config, whether it changed since it was last read, and its stamp. A refused
        serving.json raises ModelLoadError (counted once per version of the file, and logged then unless the caller
        reports it: the start, RepositoryModelLoad)."""
        with self._lock:
            override = self._overrides.get(name)
        if override is not None:
            return override, False, f"override {override.model_dump_json()}"
        path = self.settings.repo / name / SERVING_CONFIG
        try:
            info = path.stat()
            stamp = f"{info.st_mtime_ns}:{info.st_size}:{info.st_ino}"
        except FileNotFoundError:
            stamp = ""
        with self._lock:
            known = self._configs.get(name)
            refused = self._config_errors.get(name)
        if known is not None and known[0] == stamp:
            return known[1], False, stamp
        if refused is not None and refused[0] == stamp:
            raise ModelLoadError(refused[1])
        try:
            if stamp and self.outside(path):
                raise ModelLoadError(f"{path}: {self.outside(path)}")
            config = read_serving_config(path.parent)
        except ModelLoadError as err:
            with self._lock:
                self._config_errors[name] = (stamp, str(err))
            self.metrics.model_load_failures.labels(name).inc()
            if log_refusal:
                log.error("serving.json refused", extra=fields(model=name, error=str(err)))
            raise
        with self._lock:
            self._configs[name] = (stamp, config)
            self._config_errors.pop(name, None)
        return config, known is not None, stamp

    def _load_versions(
        self, name: str, versions: list[int], config: ServingConfig, stamp: str, strict: bool
    ) -> tuple[list[LoadedModel], set[int]]:
        """Loads versions in parallel: (those loaded, those that failed). A failure is remembered, logged and
        counted; when strict, it raises once every load has ended."""
        settings = config.applied_to(self.settings)
        for version in versions:
            with self._lock:
                self._changing[(name, version)] = "LOADING"
        loaded, failed, errors = [], set(), []
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {v: pool.submit(self._load, self.settings.repo / name / str(v), settings) for v in versions}
            for version, future in futures.items():
                try:
                    loaded.append(future.result())
                    with self._lock:
                        self._failed.pop((name, version), None)
                except ModelLoadError as err:
                    self._fail(name, version, str(err), stamp)
                    failed.add(version)
                    errors.append(err)
                finally:
                    with self._lock:
                        self._changing.pop((name, version), None)
        if strict and errors:
            with self._lock:
                served = set(self._models.get(name, {}))
            for model in loaded:  # a version served before serves on, under the same gauges
                model.close(forget_metrics=model.version not in served)
            raise errors[0]
        return loaded, failed

    def _load(self, version_dir: pathlib.Path, settings: ServiceSettings) -> LoadedModel:
        """Runs on a loading thread of its own: its priority, lowered here, passes to the model's inference
        threads."""
        lower_this_thread(self.settings.inference_niceness)
        started = time.perf_counter()
        try:
            model = LoadedModel(version_dir, settings, self.metrics, self.decode_budget)
        except ModelLoadError:
            raise
        except Exception as err:  # a corrupt or unusual graph: onnx and onnxruntime raise many kinds
            raise ModelLoadError(f"{version_dir}: {type(err).__name__}: {err}") from err
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

    def _fail(self, name: str, version: int, error: str, config_stamp: str) -> None:
        """Remembers why a version did not load (tried again when its folder or the model's config changes); logs
        it unless it is what was logged last for it."""
        stamps = (self._folder_stamp(name, version), config_stamp)
        with self._lock:
            known = self._failed.get((name, version), ((0, ""), ""))[1] == error
            self._failed[(name, version)] = (stamps, error)
        self.metrics.model_load_failures.labels(name).inc()
        if not known:
            log.error("model version not loaded", extra=fields(model=name, versions=[version], error=error))

    def _failed_before(self, name: str, version: int, config_stamp: str) -> bool:
        with self._lock:
            failure = self._failed.get((name, version))
        return failure is not None and failure[0] == (self._folder_stamp(name, version), config_stamp)

    def _folder_stamp(self, name: str, version: int) -> int:
        folder = self.settings.repo / name / str(version)
        try:
            return max(p.stat().st_mtime_ns for p in [folder, *folder.iterdir()])
        except OSError:
            return 0

    def _retire(self, model: LoadedModel) -> None:
        """Closes a model taken out of the registry once its requests in flight finish, in the background."""
        key = (model.name, model.version)

        def retire() -> None:
            try:
                model.drain(self.settings.grace_seconds)
                with self._lock:
                    reloaded = model.version in self._models.get(model.name, {})
                model.close(forget_metrics=not reloaded)
            finally:
                with self._lock:
                    if self._changing.get(key) == "UNLOADING":
                        del self._changing[key]
                log.info("model version retired", extra=fields(model=model.name, version=model.version))

        with self._lock:
            self._changing[key] = "UNLOADING"
        threading.Thread(target=retire, name=f"retire-{model.name}/{model.version}", daemon=True).start()

    def index(self, ready_only: bool = False) -> list[tuple[str, int, VersionState]]:
        """Every version in the repository or served, with its state (RepositoryIndex)."""
        try:
            repository = self.repository()
        except ModelLoadError:
            repository = {}
        with self._lock:
            keys = {(m, v) for m, versions in repository.items() for v in versions}
            keys |= {(m, v) for m, versions in self._models.items() for v in versions}
            rows = []
            for name, version in sorted(keys):
                why = repository.get(name, {}).get(version, "")
                refused = self._config_errors.get(name, ("", ""))[1]
                if version in self._models.get(name, {}):
                    state = VersionState("READY", refused)  # serving, with the settings of before if refused
                elif (name, version) in self._changing:
                    state = VersionState(self._changing[(name, version)])
                elif why:
                    state = VersionState("UNAVAILABLE", why)
                elif (name, version) in self._failed:
                    state = VersionState("UNAVAILABLE", f"failed to load: {self._failed[(name, version)][1]}")
                elif refused:
                    state = VersionState("UNAVAILABLE", refused)
                elif name in self._unloaded:
                    state = VersionState("UNAVAILABLE", "unloaded")
                else:
                    state = VersionState("UNAVAILABLE", "not picked by the model's version policy")
                if state.state == "READY" or not ready_only:
                    rows.append((name, version, state))
        return rows

    def serving_config(self, name: str) -> ServingConfig:
        with self._lock:
            override = self._overrides.get(name)
            known = self._configs.get(name)
        if override is not None:
            return override
        return known[1] if known is not None else ServingConfig()

    # --- serving ---------------------------------------------------------------------------------

    def get(self, name: str, version: int = 0) -> LoadedModel:
        with self._lock:
            versions = dict(self._models.get(name, {}))
            loaded = sorted(self._models)
            unloaded = name in self._unloaded
        if not versions and unloaded:
            raise Unavailable(f"model {name!r} is unloaded; load it (RepositoryModelLoad) to serve it again")
        if not versions and not loaded:
            raise Unavailable("the server is still loading its models; retry when health reports SERVING")
        if not versions:
            raise NotFound(f"no model named {name!r}; served models: {', '.join(loaded)}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise NotFound(
                f"model {name!r} has no version {version} loaded; served versions: "
                f"{', '.join(map(str, sorted(versions)))} (or 0 for the latest). A version in the repository is "
                f"served when the version policy in {name}/{SERVING_CONFIG} picks it"
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
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        with self._control, self._lock:
            models = [m for versions in self._models.values() for m in versions.values()]
            self._models.clear()
        for model in models:
            model.close()
