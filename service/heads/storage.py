"""A head's files: ``<data_dir>/heads/<name>/<version>/{head.onnx, card.json, training_mean.npy[, ncm.npz]}``,
each version folder written whole (staged, then renamed) and loaded behind the Runtime seam; and ``job.json`` in the
head's folder while a job is queued or running, so that a job a stop cut short is reported after the restart."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
import pathlib
import shutil
import tempfile
import uuid
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf import json_format

from offshelf.protos.v1 import heads_pb2 as pb2
from offshelf.service.drift import DriftMonitor
from offshelf.service.errors import HeadLoadError, ModelLoadError
from offshelf.service.heads.fitting import FittedHead
from offshelf.service.logs import fields
from offshelf.service.models.binding import Binding
from offshelf.service.models.runtime import OnnxRuntime

log = logging.getLogger(__name__)
INTERRUPTED = "interrupted by shutdown; train it again"
JOB_FILE = "job.json"  # in a head's folder while a job is queued or running: left behind, the job was interrupted


class JobState(enum.IntEnum):
    """A training job's state (the wire's JobState has the same values)."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4


@dataclass
class HeadJob:
    """A head's latest training job: the version it writes, its state and progress (0..1), and what it is doing
    or why it failed. Stored as job.json in the layout protobuf's JSON gave it (version a string, state by name)."""

    head: str
    version: int = 0
    state: JobState = JobState.UNSPECIFIED
    progress: float = 0.0
    message: str = ""

    @property
    def active(self) -> bool:
        return self.state in (JobState.QUEUED, JobState.RUNNING)

    def to_json(self) -> str:
        return json.dumps(
            {
                "head": self.head,
                "version": str(self.version),
                "state": f"JOB_STATE_{self.state.name}",
                "progress": self.progress,
                "message": self.message,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> HeadJob:
        stored = json.loads(text)
        return cls(
            head=str(stored.get("head", "")),
            version=int(stored.get("version", 0)),
            state=JobState[str(stored.get("state", "JOB_STATE_UNSPECIFIED")).removeprefix("JOB_STATE_")],
            progress=float(stored.get("progress", 0.0)),
            message=str(stored.get("message", "")),
        )


class HeadVersion:
    """One loaded version: its card (a file format: the generated HeadCard) and binding, its graph behind the
    Runtime seam (on the CPU, one thread that sleeps when idle: a head's graph is one small matrix product), and
    (ncm) the class sums for adding classes."""

    def __init__(self, directory: pathlib.Path):
        try:
            self.card = json_format.Parse((directory / "card.json").read_text(), pb2.HeadCard())
            self.binding = Binding(**{f.name: getattr(self.card.binding, f.name) for f in dataclasses.fields(Binding)})
            self.runtime = OnnxRuntime(directory / "head.onnx", "cpu", intra_op_threads=1, spinning=False)
            self.runtime.load()
            reference = directory / "training_mean.npy"
            self.training_mean = np.load(reference) if reference.exists() else None  # the domain-shift reference
            ncm = directory / "ncm.npz"
            self.fitted = None
            if ncm.exists():
                with np.load(ncm) as data:
                    self.fitted = FittedHead(
                        onnx.ModelProto(), list(self.card.labels), self.card.metrics, data["sums"], data["counts"]
                    )
        except (OSError, ValueError, KeyError, RuntimeError, json_format.ParseError, ModelLoadError) as err:
            raise HeadLoadError(
                f"head version {directory} cannot be loaded ({err}); delete that folder to serve the head's "
                "previous version, or train the head again"
            ) from err
        self.drift = DriftMonitor()

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        self.drift.observe(vectors)
        return self.runtime.run({"embedding": vectors.astype(np.float32)})["probabilities"]


def write_version(
    head_dir: pathlib.Path,
    version: int,
    kind: str,
    binding: Binding,
    fitted: FittedHead,
    training_mean: np.ndarray,
) -> pathlib.Path:
    """Writes a fitted head as version folder `version` of `head_dir`, whole or not at all; returns the folder."""
    head_dir.mkdir(parents=True, exist_ok=True)
    staged = pathlib.Path(tempfile.mkdtemp(dir=head_dir, prefix=".incoming-"))
    try:
        onnx.save(fitted.graph, staged / "head.onnx")
        card = pb2.HeadCard(
            name=head_dir.name,
            version=version,
            kind=kind,
            binding=dataclasses.asdict(binding),
            labels=fitted.labels,
            metrics=fitted.metrics,
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        (staged / "card.json").write_text(json_format.MessageToJson(card, preserving_proto_field_name=True))
        np.save(staged / "training_mean.npy", training_mean.astype(np.float32))
        if fitted.class_sums is not None and fitted.class_counts is not None:
            np.savez(staged / "ncm.npz", sums=fitted.class_sums, counts=fitted.class_counts)
        staged.chmod(0o755)
        staged.rename(head_dir / str(version))
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return head_dir / str(version)


def interrupted_job(directory: pathlib.Path) -> HeadJob | None:
    """The job a stop (SIGTERM, a crash) left queued or running in the head's folder, now FAILED; None if none."""
    try:
        job = HeadJob.from_json((directory / JOB_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # written half when the stop came
        job = HeadJob(head=directory.name)
    job.state, job.message = JobState.FAILED, INTERRUPTED
    log.info("head training was interrupted by a stop", extra=fields(head=job.head, version=job.version))
    return job


def record_job(directory: pathlib.Path, job: HeadJob) -> None:
    """Writes a head's job into its folder, whole or not at all."""
    directory.mkdir(parents=True, exist_ok=True)
    staged = directory / f".{JOB_FILE}.{uuid.uuid4().hex}"
    staged.write_text(job.to_json())
    staged.replace(directory / JOB_FILE)
