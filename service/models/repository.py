"""The model repository as the registry sees it: model folders and their complete version folders (a link out of
the repository refused unless allowed), and each model's serving config (serving.json, or an override given with
RepositoryModelLoad), read again only when the file changes, a refusal remembered for that version of the file."""

from __future__ import annotations

import logging
import os
import pathlib
import threading

from offshelf.service.errors import ModelLoadError
from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics
from offshelf.service.models.loaded_model import read_card
from offshelf.service.models.serving_config import SERVING_CONFIG, ServingConfig, read_serving_config

log = logging.getLogger(__name__)


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


class ModelRepository:
    def __init__(self, root: pathlib.Path, allow_links_outside: bool, metrics: Metrics):
        self.root = root
        self.allow_links_outside = allow_links_outside
        self.metrics = metrics
        self._configs: dict[str, tuple[str, ServingConfig]] = {}  # by model: (serving.json stamp, config)
        self._config_errors: dict[str, tuple[str, str]] = {}  # by model: (serving.json stamp, why it is refused)
        self._overrides: dict[str, ServingConfig] = {}  # by model: a config given with RepositoryModelLoad
        self._lock = threading.Lock()

    def versions(self) -> dict[str, dict[int, str]]:
        """Every model folder with its version folders, each with "" when it can be loaded, else why it is left
        aside (incomplete, or a link out of the repository)."""
        if not self.root.is_dir():
            raise ModelLoadError(
                f"model repository {self.root} does not exist; export a model into it first "
                f"(offshelf export efficientnet-lite0 --repo {self.root})"
            )
        models = {}
        for model in sorted(self.root.iterdir()):
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
        if self.allow_links_outside:
            return ""
        root = self.root.resolve()
        for path in paths:
            target = path.resolve()
            if not target.is_relative_to(root):
                return (
                    f"{path.relative_to(self.root)} links outside the repository (to {target}); move it "
                    "into the repository, or serve with --allow-links-outside-repo"
                )
        return ""

    def folder_stamp(self, name: str, version: int) -> int:
        """When the version folder or a file in it last changed (0: gone)."""
        folder = self.root / name / str(version)
        try:
            return max(p.stat().st_mtime_ns for p in [folder, *folder.iterdir()])
        except OSError:
            return 0

    def config(self, name: str, log_refusal: bool) -> tuple[ServingConfig, bool, str]:
        """The model's serving config, whether it changed since it was last read, and its stamp. A refused
        serving.json raises ModelLoadError (counted once per version of the file, and logged then unless the caller
        reports it: the start, RepositoryModelLoad)."""
        with self._lock:
            override = self._overrides.get(name)
        if override is not None:
            return override, False, f"override {override.model_dump_json()}"
        path = self.root / name / SERVING_CONFIG
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

    def serving_config(self, name: str) -> ServingConfig:
        """The config the model serves with: its override, else the last serving.json read, else the defaults."""
        with self._lock:
            override = self._overrides.get(name)
            known = self._configs.get(name)
        if override is not None:
            return override
        return known[1] if known is not None else ServingConfig()

    def refusal(self, name: str) -> str:
        """Why the model's current serving.json is refused ("" when it is not)."""
        with self._lock:
            return self._config_errors.get(name, ("", ""))[1]

    def reread(self, name: str, override: ServingConfig | None) -> ServingConfig | None:
        """Forgets what was read of the model's config, so the next read is fresh, and sets its override (None:
        serving.json again). Returns the override it replaced."""
        with self._lock:
            self._configs.pop(name, None)
            self._config_errors.pop(name, None)
            previous = self._overrides.get(name)
        self.set_override(name, override)
        return previous

    def set_override(self, name: str, override: ServingConfig | None) -> None:
        with self._lock:
            self._overrides.pop(name, None)
            if override is not None:
                self._overrides[name] = override
