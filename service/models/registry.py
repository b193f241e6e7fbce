"""The model registry: the versions of the repository's models that are served (the version policies, the versions
collections and heads are bound to), loaded in parallel, warmed up, swapped in and retired."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from offshelf.service.errors import (
    FailedPrecondition,
    ModelLoadError,
    NotFound,
    Unavailable,
)
from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics
from offshelf.service.models.binding import Binding, describe
from offshelf.service.models.loaded_model import LoadedModel
from offshelf.service.models.loader import load_versions
from offshelf.service.models.preprocess import PixelBudget
from offshelf.service.models.repository import ModelRepository
from offshelf.service.models.serving_config import SERVING_CONFIG, ServingConfig
from offshelf.service.models.version_states import VersionState, VersionStates
from offshelf.service.periodic import every
from offshelf.service.settings import ServiceSettings

log = logging.getLogger(__name__)


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
        self.repository = ModelRepository(settings.repo, settings.allow_links_outside_repo, metrics)
        self.states = VersionStates(self.repository, metrics)
        self._lock = threading.Lock()  # _models
        self._control = threading.Lock()  # one sync, load or unload at a time
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # --- keeping in step with the repository ------------------------------------------------------

    def load_all(self) -> None:
        """The first load: raises ModelLoadError if any version the policies pick cannot be served. Folders left
        aside (incomplete, links out of the repository) are logged."""
        with self._control:
            repository = self.repository.versions()
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
            repository = self.repository.versions()
            with self._lock:
                names = sorted((set(repository) | set(self._models)) - self.states.unloaded())
            self._sync(repository, names, strict=False)

    def poll(self, seconds: float) -> None:
        """Syncs every `seconds` in a thread of its own until close()."""
        self._poller = every(seconds, self.sync, self._stop, "repository-poll")

    def load(self, name: str, override: ServingConfig | None = None) -> None:
        """Loads a model, or reloads it (its serving.json read again): RepositoryModelLoad. override: a config
        that replaces serving.json until the model is loaded again without one (Triton's config override)."""
        with self._control:
            repository = self.repository.versions()
            if name not in repository:
                raise NotFound(f"no model folder {name!r} in the repository; models there: {', '.join(repository)}")
            previous = self.repository.reread(name, override)
            self.states.load_requested(name)
            try:
                self._sync(repository, [name], strict=True, reload=True)
            except ModelLoadError as err:
                self.repository.set_override(name, previous)  # the model serves on as before
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
            in_repository = name in self.repository.versions()
            with self._lock:
                if name not in self._models and not in_repository:
                    raise NotFound(f"no model named {name!r}")
                self.states.unload_requested(name)
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
                config, changed, stamp = self.repository.config(name, log_refusal=not strict)
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
            failed = set() if strict else {v for v in present if self.states.failed_before(name, v, stamp)}
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

    def _load_versions(
        self, name: str, versions: list[int], config: ServingConfig, stamp: str, strict: bool
    ) -> tuple[list[LoadedModel], set[int]]:
        """Loads versions in parallel: (those loaded, those that failed). A failure is remembered, logged and
        counted; when strict, it raises once every load has ended."""
        for version in versions:
            self.states.begin(name, version, "LOADING")
        try:
            settings = config.applied_to(self.settings)
            loaded, errors = load_versions(
                self.settings.repo / name, versions, settings, self.metrics, self.decode_budget
            )
        finally:
            for version in versions:
                self.states.end(name, version, "LOADING")
        for model in loaded:
            self.states.loaded(name, model.version)
        for version, err in errors.items():
            self.states.failed(name, version, str(err), stamp)
        if strict and errors:
            with self._lock:
                served = set(self._models.get(name, {}))
            for model in loaded:  # a version served before serves on, under the same gauges
                model.close(forget_metrics=model.version not in served)
            raise next(iter(errors.values()))
        return loaded, set(errors)

    def _retire(self, model: LoadedModel) -> None:
        """Closes a model taken out of the registry once its requests in flight finish, in the background."""

        def retire() -> None:
            try:
                model.drain(self.settings.grace_seconds)
                with self._lock:
                    reloaded = model.version in self._models.get(model.name, {})
                model.close(forget_metrics=not reloaded)
            finally:
                self.states.end(model.name, model.version, "UNLOADING")
                log.info("model version retired", extra=fields(model=model.name, version=model.version))

        self.states.begin(model.name, model.version, "UNLOADING")
        threading.Thread(target=retire, name=f"retire-{model.name}/{model.version}", daemon=True).start()

    def index(self, ready_only: bool = False) -> list[tuple[str, int, VersionState]]:
        """Every version in the repository or served, with its state (RepositoryIndex)."""
        try:
            repository = self.repository.versions()
        except ModelLoadError:
            repository = {}
        with self._lock:
            served = {(m, v) for m, versions in self._models.items() for v in versions}
        keys = sorted({(m, v) for m, versions in repository.items() for v in versions} | served)
        states = [(m, v, self.states.of(m, v, (m, v) in served, repository.get(m, {}).get(v, ""))) for m, v in keys]
        return [row for row in states if row[2].state == "READY" or not ready_only]

    # --- serving ---------------------------------------------------------------------------------

    def get(self, name: str, version: int = 0) -> LoadedModel:
        with self._lock:
            versions = dict(self._models.get(name, {}))
            loaded = sorted(self._models)
            unloaded = self.states.is_unloaded(name)
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

    def for_binding(self, binding: Binding, owner: str) -> LoadedModel:
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
