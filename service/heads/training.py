"""A head's training: what to train (TrainSpec), where its labelled vectors come from (a collection's labelled items,
or images embedded by a served model), and the job itself: gather, fit, write the version (and upload it when heads
are shared), hand it to the registry to serve. Progress and outcome are kept in the head's job."""

from __future__ import annotations

import logging
import pathlib
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from offshelf.service.errors import Cancelled, FailedPrecondition, InvalidArgument, ServiceError
from offshelf.service.heads.fitting import fit, l2_normalise
from offshelf.service.heads.storage import INTERRUPTED, HeadJob, HeadVersion, JobState, write_version
from offshelf.service.logs import fields
from offshelf.service.models.binding import Binding

if TYPE_CHECKING:
    from offshelf.service.heads.shared import SharedHeads
    from offshelf.service.index.contract import CollectionCatalog
    from offshelf.service.models.registry import ModelRegistry

log = logging.getLogger(__name__)
DELETED_WHILE_TRAINING = "the head was deleted while it trained"
Progress = Callable[[float, str], None]
Gather = Callable[[Progress], tuple[np.ndarray, list[str]]]  # the labelled vectors, gathered in the job


@dataclass(frozen=True)
class LabelledImages:
    """Training images embedded with a served model's output (version 0: the latest; output "": "embedding")."""

    model: str
    version: int
    output: str
    images: list[bytes]
    labels: list[str]


@dataclass(frozen=True)
class TrainSpec:
    """A head to train: its name and kind (fitting.KINDS), from a collection's labelled items or from images;
    add_classes (ncm): keep the served version's classes and add or replace the given ones."""

    name: str
    kind: str
    collection: str = ""
    images: LabelledImages | None = None
    add_classes: bool = False


class HeadEntry:
    """A head as a replica knows it: its versions, the one served, its last job, and whether it was deleted."""

    def __init__(self, name: str):
        self.name = name
        self.served: HeadVersion | None = None
        self.versions: list[int] = []
        self.job = HeadJob(head=name)
        self.deleted = False


def source(spec: TrainSpec, models: ModelRegistry, collections: CollectionCatalog) -> tuple[Binding, Gather]:
    """The binding of the training data and a function that gathers (vectors, labels) in the job."""
    if spec.images is None:
        collection = collections.get(spec.collection)
        if not collection.config.binding.model:
            raise FailedPrecondition(
                f"collection {spec.collection!r} holds your own vectors, with no model to embed the images a "
                "head classifies; train the head on a collection bound to a model, or on images"
            )
        return collection.config.binding, lambda progress: collection.labelled_vectors()
    images = spec.images
    model = models.get(images.model, images.version)
    (output,) = model.check_outputs([images.output or "embedding"])

    def gather(progress: Progress) -> tuple[np.ndarray, list[str]]:
        vectors = []
        for start in range(0, len(images.images), 32):
            batch = images.images[start : start + 32]
            progress(0.3 * start / len(images.images), f"embedding images {start}/{len(images.images)}")
            names = [f"image {start + j}" for j in range(len(batch))]
            vectors.append(model.embed(batch, names=names)[output])
        return np.concatenate(vectors), images.labels

    return model.binding(output), gather


@dataclass
class TrainingJob:
    entry: HeadEntry
    spec: TrainSpec
    binding: Binding
    gather: Gather
    version: int

    def run(
        self,
        stop: threading.Event,
        root: pathlib.Path,
        shared: SharedHeads | None,
        install: Callable[[HeadEntry, int, HeadVersion], bool],
    ) -> None:
        """Trains the version; `install` serves it, or refuses it (False) when the head was deleted meanwhile.
        A delete or a stop ends the job at its next step."""
        entry, job = self.entry, self.entry.job

        def progress(fraction: float, message: str) -> None:
            if entry.deleted:
                raise Cancelled(DELETED_WHILE_TRAINING)
            if stop.is_set():
                raise Cancelled(INTERRUPTED)
            job.progress, job.message = fraction, message

        job.state = JobState.RUNNING
        try:
            vectors, labels = self.gather(progress)
            if len(vectors) == 0:
                raise InvalidArgument("the source has no labelled items")
            offset = 0.0 if self.spec.images is None else 0.3
            previous = entry.served.fitted if self.spec.add_classes and entry.served else None
            scaled: Progress = lambda f, m: progress(offset + (1 - offset) * 0.9 * f, m)  # noqa: E731
            fitted = fit(self.spec.kind, vectors, labels, scaled, previous)
            if entry.deleted:  # deleted while it trained: nothing to write
                self._deleted(None)
                return
            progress(0.95, "writing and loading the new version")
            training_mean = l2_normalise(np.asarray(vectors, np.float32)).mean(axis=0)
            folder = write_version(root / entry.name, self.version, self.spec.kind, self.binding, fitted, training_mean)
            if shared is not None:
                shared.upload(entry.name, self.version, folder)
            if not install(entry, self.version, HeadVersion(folder)):
                # deleted while it was written: remove what was written, so no restart serves it again
                shutil.rmtree(folder, ignore_errors=True)
                self._deleted(shared)
                return
            job.state, job.progress = JobState.SUCCEEDED, 1.0
            job.message = (
                f"serving version {self.version}: {len(fitted.labels)} classes, cross-validated accuracy "
                f"{fitted.metrics.cv_accuracy:.3f} over {fitted.metrics.folds} folds"
            )
            accuracy = fitted.metrics.cv_accuracy
            log.info(
                "head trained",
                extra=fields(head=entry.name, version=self.version, kind=self.spec.kind, cv_accuracy=accuracy),
            )
        except ServiceError as err:
            job.state, job.message = JobState.FAILED, err.message
        except Exception as err:
            if not entry.deleted:
                log.exception("head training failed", extra=fields(head=entry.name))
                job.state, job.message = JobState.FAILED, f"training failed: {err}"
                return
            # its folder went while the version was written or uploaded: an expected outcome
            log.info("head deleted while its new version was written", extra=fields(head=entry.name, error=str(err)))
            self._deleted(shared)  # the files uploaded after the delete (no marker: never served)

    def _deleted(self, shared: SharedHeads | None) -> None:
        """The job ends FAILED because the head was deleted; what it uploaded after the delete goes too."""
        if shared is not None:
            shared.delete(self.entry.name)
        self.entry.job.state, self.entry.job.message = JobState.FAILED, DELETED_WHILE_TRAINING
