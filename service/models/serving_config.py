"""A model's serving configuration: ``<repo>/<model>/serving.json``, beside its version folders.

Every key is optional; the server's settings (flags, OFFSHELF_*) are the defaults. Read when the model is loaded,
and again when the file changes (the model's versions are then reloaded with it)::

    {
      "version_policy": {"latest": 2},      // or {"all": true}, or {"specific": [1, 3]}; default {"latest": 1}
      "max_batch_size": 32,
      "max_batch_delay_ms": 2,
      "max_queue_images": 1024,
      "eager_batching": false,
      "instances": 1,
      "intra_op_threads": 4,
      "execution_provider": "cpu"
    }
"""

from __future__ import annotations

import pathlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from offshelf.service.errors import ModelLoadError
from offshelf.service.settings import ServiceSettings

SERVING_CONFIG = "serving.json"


class VersionPolicy(BaseModel):
    """Which of a model's versions are served, as Triton's version_policy: the latest N, all, or listed ones."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: list[int] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_choice(self) -> VersionPolicy:
        chosen = [self.latest is not None, self.all, self.specific is not None]
        if sum(chosen) > 1:
            raise ValueError("choose one of latest, all and specific")
        if not any(chosen):
            self.latest = 1
        return self

    def choose(self, available: list[int]) -> list[int]:
        """The versions to serve among those in the repository."""
        if self.all:
            return sorted(available)
        if self.specific is not None:
            return sorted(set(self.specific) & set(available))
        return sorted(available)[-(self.latest or 1) :]


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_delay_ms: float | None = Field(default=None, ge=0)
    max_queue_images: int | None = Field(default=None, ge=1)
    eager_batching: bool | None = None
    instances: int | None = Field(default=None, ge=1)
    intra_op_threads: int | None = Field(default=None, ge=0)
    execution_provider: Literal["auto", "cuda", "cpu"] | None = None

    def applied_to(self, settings: ServiceSettings) -> ServiceSettings:
        """The server's settings with this model's overrides."""
        overrides = self.model_dump(exclude={"version_policy"}, exclude_none=True)
        return settings.model_copy(update=overrides)


def read_serving_config(model_dir: pathlib.Path) -> ServingConfig:
    """The model's serving.json, or the defaults when it has none; ModelLoadError naming the file and the fix."""
    path = model_dir / SERVING_CONFIG
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ServingConfig()
    except OSError as err:
        raise ModelLoadError(f"{path}: unreadable ({err})") from err
    try:
        return ServingConfig.model_validate_json(text)
    except ValidationError as err:
        raise ModelLoadError(f"{path}: {problems(err, 'the file')}; see docs/models.md for its keys") from err


def problems(err: ValidationError, whole: str) -> str:
    """Each error of a validation with the key at fault (`whole` names the document itself)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in err.errors())
