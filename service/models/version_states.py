"""What the repository index (Triton's RepositoryIndex) reports of versions that do not serve: being loaded or
unloaded now, failed to load (remembered with the folder's and config's stamps, so that a version is tried again
only when either changes), or a model unloaded by request."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics
from offshelf.service.models.repository import ModelRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionState:
    """A version's state as Triton's repository index reports it: READY, LOADING, UNLOADING or UNAVAILABLE."""

    state: str
    reason: str = ""


class VersionStates:
    def __init__(self, repository: ModelRepository, metrics: Metrics):
        self.repository, self.metrics = repository, metrics
        self._failed: dict[tuple[str, int], tuple[tuple[int, str], str]] = {}  # (folder, config stamps), error
        self._changing: dict[tuple[str, int], str] = {}  # LOADING or UNLOADING
        self._unloaded: set[str] = set()  # models unloaded by request: they stay unloaded until loaded again
        self._lock = threading.Lock()

    def begin(self, name: str, version: int, change: str) -> None:
        with self._lock:
            self._changing[(name, version)] = change

    def end(self, name: str, version: int, change: str) -> None:
        with self._lock:
            if self._changing.get((name, version)) == change:
                del self._changing[(name, version)]

    def loaded(self, name: str, version: int) -> None:
        with self._lock:
            self._failed.pop((name, version), None)

    def failed(self, name: str, version: int, error: str, config_stamp: str) -> None:
        """Remembers why a version did not load; logs it unless it is what was logged last for it."""
        stamps = (self.repository.folder_stamp(name, version), config_stamp)
        with self._lock:
            known = self._failed.get((name, version), (None, ""))[1] == error
            self._failed[(name, version)] = (stamps, error)
        self.metrics.model_load_failures.labels(name).inc()
        if not known:
            log.error("model version not loaded", extra=fields(model=name, versions=[version], error=error))

    def failed_before(self, name: str, version: int, config_stamp: str) -> bool:
        """Whether the version failed to load from the folder and config as they are now."""
        with self._lock:
            failure = self._failed.get((name, version))
        return failure is not None and failure[0] == (self.repository.folder_stamp(name, version), config_stamp)

    def unload_requested(self, name: str) -> None:
        with self._lock:
            self._unloaded.add(name)

    def unloaded(self) -> set[str]:
        with self._lock:
            return set(self._unloaded)

    def is_unloaded(self, name: str) -> bool:
        return name in self._unloaded  # one lookup: atomic under the GIL, and on every call's path

    def load_requested(self, name: str) -> None:
        """A load by request: the model is no longer unloaded, and its versions that failed are tried again."""
        with self._lock:
            self._unloaded.discard(name)
            self._failed = {key: failure for key, failure in self._failed.items() if key[0] != name}

    def of(self, name: str, version: int, serving: bool, aside: str) -> VersionState:
        """The state of a version, given whether it serves and why its folder is left aside ("" when it is not)."""
        refused = self.repository.refusal(name)
        with self._lock:
            if serving:
                return VersionState("READY", refused)  # serving, with the settings of before if refused
            if (name, version) in self._changing:
                return VersionState(self._changing[(name, version)])
            if aside:
                return VersionState("UNAVAILABLE", aside)
            if (name, version) in self._failed:
                return VersionState("UNAVAILABLE", f"failed to load: {self._failed[(name, version)][1]}")
            if refused:
                return VersionState("UNAVAILABLE", refused)
            if name in self._unloaded:
                return VersionState("UNAVAILABLE", "unloaded")
        return VersionState("UNAVAILABLE", "not picked by the model's version policy")
