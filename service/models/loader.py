"""Loading model versions: each on a thread of its own (several at once), at the inference priority, timed and
logged; any failure of an unusual graph reported as a ModelLoadError."""

from __future__ import annotations

import logging
import pathlib
import time
from concurrent.futures import ThreadPoolExecutor

from offshelf.service.errors import ModelLoadError
from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics
from offshelf.service.models.loaded_model import LoadedModel
from offshelf.service.models.preprocess import PixelBudget
from offshelf.service.models.priority import lower_this_thread
from offshelf.service.settings import ServiceSettings

log = logging.getLogger(__name__)


def load_versions(
    model_dir: pathlib.Path, versions: list[int], settings: ServiceSettings, metrics: Metrics, budget: PixelBudget
) -> tuple[list[LoadedModel], dict[int, ModelLoadError]]:
    """Loads versions of a model in parallel: those loaded, and the errors of those that failed."""
    loaded, errors = [], {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {v: pool.submit(load_version, model_dir / str(v), settings, metrics, budget) for v in versions}
        for version, future in futures.items():
            try:
                loaded.append(future.result())
            except ModelLoadError as err:
                errors[version] = err
    return loaded, errors


def load_version(
    version_dir: pathlib.Path, settings: ServiceSettings, metrics: Metrics, budget: PixelBudget
) -> LoadedModel:
    """Runs on a loading thread of its own: its priority, lowered here, passes to the model's inference threads."""
    lower_this_thread(settings.inference_niceness)
    started = time.perf_counter()
    try:
        model = LoadedModel(version_dir, settings, metrics, budget)
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
