"""onnxruntime behind the Runtime seam: load() / run(batch) / close().

CUDA is used only when it really works: onnxruntime-gpu lists CUDAExecutionProvider as
available on machines without a GPU and silently falls back to the CPU when a session is
created, so the provider is read back from the session.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import logging
import pathlib
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from offshelf.service.errors import ModelLoadError
from offshelf.service.logs import fields
from offshelf.service.models.cuda_check import driver_problem

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def installed() -> str:
    """The onnxruntime package this process runs and its version, e.g. 'onnxruntime-gpu 1.31.1' (offshelf[gpu]) or
    'onnxruntime 1.32.0' (offshelf[cpu])."""
    for package in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{package} {importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"onnxruntime {ort.__version__}"  # a build of one's own


class OnnxRuntime:
    def __init__(
        self,
        path: pathlib.Path,
        execution_provider: str = "auto",
        intra_op_threads: int = 0,
        graph: bytes | None = None,
        spinning: bool = True,
    ):
        """graph: the serialized graph to run instead of the file at `path` (which error messages still name).
        spinning: whether idle intra-op threads spin (onnxruntime's default) rather than sleep."""
        self.path = path
        self.execution_provider = execution_provider
        self.intra_op_threads = intra_op_threads
        self.spinning = spinning
        self.graph = graph
        self.provider = ""
        self._session: ort.InferenceSession | None = None

    def load(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.execution_provider != "cpu" and CUDA in ort.get_available_providers():
            ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, when installed
            session = ort.InferenceSession(self.graph or str(self.path), options, providers=[CUDA, CPU])
            if session.get_providers()[0] == CUDA:
                self._use(session)
                return
            if self.execution_provider == "auto":
                reason = driver_problem()
                log.warning(
                    f"CUDA is listed but does not work here{f' ({reason})' if reason else ''}; using the CPU",
                    extra=fields(model_path=str(self.path)),
                )
        if self.execution_provider == "cuda":
            raise ModelLoadError(
                f"{self.path}: execution_provider=cuda but CUDA does not work on this machine "
                f"({driver_problem() or 'needs an NVIDIA GPU, CUDA 13 and cuDNN 9'}); use auto (the CPU when CUDA "
                "does not work) or cpu"
            )
        self._use(ort.InferenceSession(self.graph or str(self.path), options, providers=[CPU]))

    def _use(self, session: ort.InferenceSession) -> None:
        self._session = session
        self.provider = session.get_providers()[0]

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError("OnnxRuntime.load() was not called")
        return self._session

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, batch), strict=True))

    def close(self) -> None:
        self._session = None
        return_freed_memory()


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _malloc_trim()


def return_freed_memory() -> None:
    """Hands the free pages of the C heap back to the system. A closed session's memory (weights, arena, the
    buffers its threads allocated) goes back to glibc's per-thread arenas, which keep it: an unloaded
    EfficientNet-Lite0 left about 120 MB resident without this."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
