"""Heads: classifiers over one embedding output, trained in the background, versioned on disk (storage.py),
hot-swapped. The served version is one object reference:
a new version replaces it atomically, and requests already holding the old one finish on it.

With collections on Milvus (shared.py), that folder is a replica's copy: each trained version is uploaded to
Milvus, and every `sync_seconds` each replica downloads and serves the versions others trained, and drops the
heads others deleted. A lease in etcd makes a head train on one replica at a time.
"""

from __future__ import annotations

import logging
import pathlib
import queue
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from offshelf.service.errors import FailedPrecondition, HeadLoadError, NotFound, Unavailable
from offshelf.service.heads.storage import (
    JOB_FILE,
    HeadJob,
    HeadVersion,
    JobState,
    interrupted_job,
    record_job,
)
from offshelf.service.heads.training import Gather, HeadEntry, TrainingJob, TrainSpec, source
from offshelf.service.logs import fields
from offshelf.service.models.binding import Binding, describe
from offshelf.service.models.registry import ModelRegistry
from offshelf.service.periodic import every

if TYPE_CHECKING:
    from offshelf.service.heads.shared import EtcdLeases, Lease, SharedHeads
    from offshelf.service.index.contract import CollectionCatalog

log = logging.getLogger(__name__)


class HeadRegistry:
    def __init__(self, data_dir: pathlib.Path, models: ModelRegistry, collections: CollectionCatalog):
        self.root = data_dir / "heads"
        self.models = models
        self.collections = collections
        self._heads: dict[str, HeadEntry] = {}
        self._lock = threading.Lock()
        self._download_lock = threading.Lock()
        # One daemon thread trains the queued jobs in turn: a job still running when the server stops does not keep
        # the process alive past its grace period (it stops at its next step, and dies with the process).
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.shared: SharedHeads | None = None
        self.leases: EtcdLeases | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._train_jobs, name="head-training", daemon=True).start()

    def share(self, shared: SharedHeads, leases: EtcdLeases | None, sync_seconds: float) -> None:
        """Keeps heads in `shared` too, and loads what other replicas put there every `sync_seconds`."""
        self.shared, self.leases, self.sync_seconds = shared, leases, sync_seconds

    def load_all(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.shared is not None:
            self._download_new(self.shared.versions())
            # Milvus away for a while is logged once, by its client: the heads served stay served
            every(self.sync_seconds, self.sync, self._stop, "heads-sync", quiet=(Unavailable,))
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            entry = HeadEntry(directory.name)
            entry.versions = sorted(int(v.name) for v in directory.iterdir() if v.name.isdigit())
            if entry.versions:
                entry.served = HeadVersion(directory / str(entry.versions[-1]))
                entry.job = HeadJob(
                    head=entry.name,
                    version=entry.versions[-1],
                    state=JobState.SUCCEEDED,
                    progress=1.0,
                    message="loaded from disk",
                )
            interrupted = interrupted_job(directory)
            if interrupted is not None:
                entry.job = interrupted
            if entry.versions or interrupted is not None:
                self._heads[entry.name] = entry

    def _job_done(self, entry: HeadEntry) -> None:
        """The job ended here (succeeded, failed, or stopped by a delete): nothing left to report after a restart."""
        with self._lock:
            if self._heads.get(entry.name) is entry:
                (self.root / entry.name / JOB_FILE).unlink(missing_ok=True)

    def close(self) -> None:
        self._stop.set()
        self._jobs.put(lambda: None)  # wakes the trainer, which then sees the stop

    def _train_jobs(self) -> None:
        while not self._stop.is_set():
            self._jobs.get()()

    # --- sharing through Milvus ------------------------------------------------------------------

    def sync(self) -> None:
        """Serves the newest version of every head in the shared store, and forgets heads deleted from it."""
        assert self.shared is not None
        stored = self.shared.versions()
        for name in self._download_new(stored):
            self._serve_stored(name, stored[name])
        with self._lock:
            gone = [
                name
                for name, entry in self._heads.items()
                if name not in stored and entry.versions and not entry.job.active
            ]
        if gone:  # look again: a version trained here meanwhile is stored before it is served
            stored = self.shared.versions()
        for name in [name for name in gone if name not in stored]:
            self._forget(name)

    def _serve_stored(self, name: str, versions: list[int]) -> None:
        """Serves the newest of a head's stored versions (downloaded), unless the head is training here."""
        served = HeadVersion(self.root / name / str(versions[-1]))
        with self._lock:
            entry = self._heads.setdefault(name, HeadEntry(name))
            if entry.job.active:
                return
            entry.versions, entry.served = versions, served
            entry.job = HeadJob(
                head=name,
                version=versions[-1],
                state=JobState.SUCCEEDED,
                progress=1.0,
                message="trained by another replica",
            )
        log.info("head loaded from Milvus", extra=fields(head=name, version=versions[-1]))

    def _look_up_shared(self, name: str) -> HeadEntry | None:
        """A head unknown here that another replica trained since the last sync: fetched now, so that a call right
        after TrainHead through another replica finds it. None when the shared store lacks it too."""
        if self.shared is None:
            return None
        versions = self.shared.versions().get(name)
        if not versions:
            return None
        try:
            self._download_new({name: versions})
            self._serve_stored(name, versions)
        except HeadLoadError as err:  # deleted through another replica while it was fetched
            raise Unavailable(f"head {name!r} changed in Milvus while it was fetched ({err}); retry") from err
        with self._lock:
            return self._heads.get(name)

    def _download_new(self, stored: dict[str, list[int]]) -> list[str]:
        """Downloads the newest stored version of each head that this replica lacks; returns those heads."""
        assert self.shared is not None
        with self._download_lock:  # the sync loop and a call's look-up may fetch the same version
            return self.shared.download_missing(self.root, stored)

    def get(self, name: str) -> HeadEntry:
        with self._lock:
            entry = self._heads.get(name)
        if entry is None:
            entry = self._look_up_shared(name)
        if entry is None:
            raise NotFound(f"no head named {name!r}; ListHeads lists them")
        return entry

    def serving(self, name: str) -> HeadVersion:
        """The version that answers requests now; NotFound while the first one is still training."""
        served = self.get(name).served
        if served is None:
            raise NotFound(f"head {name!r} has no version ready yet; GetHead shows its training job")
        return served

    def all(self) -> list[HeadEntry]:
        with self._lock:
            return [self._heads[n] for n in sorted(self._heads)]

    def delete(self, name: str) -> None:
        if self.shared is not None:
            if name not in self._heads and name not in self.shared.versions():
                raise NotFound(f"no head named {name!r}; ListHeads lists them")
            self.shared.delete(name)
            self._forget(name)
            return
        if not self._forget(name):
            raise NotFound(f"no head named {name!r}; ListHeads lists them")

    def _forget(self, name: str) -> bool:
        """Stops serving the head and removes its folder; False when it was not known."""
        with self._lock:
            entry = self._heads.pop(name, None)
        if entry is None:
            return False
        entry.deleted = True
        doomed = self.root / f".deleting-{uuid.uuid4().hex}"
        if (self.root / name).exists():
            (self.root / name).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        return True

    def train(self, spec: TrainSpec) -> HeadJob:
        """Queues a training job for a validated spec (api/heads.py validates it)."""
        binding, gather = source(spec, self.models, self.collections)
        lease = None
        if self.leases is not None:
            lease = self.leases.acquire(f"heads/{spec.name}/training", self.leases.owner)
            if lease is None:
                raise FailedPrecondition(
                    f"head {spec.name!r} is already training on another replica; wait for it (GetHead on any "
                    "replica shows it once it is done) before starting another"
                )
        try:
            job = self._queue(spec, binding, gather, lease)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        return job

    def _queue(self, spec: TrainSpec, binding: Binding, gather: Gather, lease: Lease | None) -> HeadJob:
        stored = self.shared.versions().get(spec.name, []) if self.shared is not None else []
        with self._lock:
            entry = self._heads.setdefault(spec.name, HeadEntry(spec.name))
            if entry.job.active:
                raise FailedPrecondition(  # not UNAVAILABLE: an immediate retry cannot succeed
                    f"head {spec.name!r} is already training (version {entry.job.version}); "
                    "wait for it (GetHead) before starting another"
                )
            if entry.served is not None and entry.served.binding != binding:
                raise FailedPrecondition(
                    f"head {spec.name!r} is bound to {describe(entry.served.binding)}; "
                    f"the source holds {describe(binding)}: delete the head or use another name"
                )
            version = max([*entry.versions, *stored], default=0) + 1
            entry.job = HeadJob(
                head=spec.name, version=version, state=JobState.QUEUED, message="waiting for the trainer"
            )
            # under the lock: a delete either comes after (and removes it) or before (the job is a new entry's)
            record_job(self.root / entry.name, entry.job)
            job = replace(entry.job)
        self._jobs.put(lambda: self._run(TrainingJob(entry, spec, binding, gather, version), lease))
        return job

    def _run(self, job: TrainingJob, lease: Lease | None) -> None:
        try:
            job.run(self._stop, self.root, self.shared, self._install)
            if not (self._stop.is_set() and job.entry.job.state == JobState.FAILED):
                self._job_done(job.entry)  # one the stop cut short stays recorded, to be reported after the restart
        finally:
            if lease is not None:
                lease.release()

    def _install(self, entry: HeadEntry, version: int, served: HeadVersion) -> bool:
        """Serves a new version of the head, unless it was deleted."""
        with self._lock:
            if not entry.deleted:
                entry.served = served
                entry.versions.append(version)
            return not entry.deleted
