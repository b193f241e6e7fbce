"""The model repository as the registry reads it (service/models/repository.py), in process on the tiny model:
which version folders count, links out of the repository, and serving.json read again only when it changes."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from offshelf.service.errors import ModelLoadError
from offshelf.service.metrics import Metrics
from offshelf.service.models.repository import ModelRepository
from offshelf.service.models.serving_config import ServingConfig

from common import write_identity_model

MODEL = "random-projection-16"


@pytest.fixture
def repo(tmp_path):
    return write_identity_model(tmp_path / "repo", 16)


def failures(metrics: Metrics) -> float:
    return metrics.model_load_failures.labels(MODEL)._value.get()


def write_config(repo, config: dict, stamp_ns: int) -> None:
    path = repo / MODEL / "serving.json"
    path.write_text(json.dumps(config))
    os.utime(path, ns=(stamp_ns, stamp_ns))  # a rewrite within the file system's time granularity is seen


def test_a_version_counts_once_complete_and_inside_the_repository(repo, tmp_path):
    partial = repo / MODEL / "2"
    partial.mkdir()
    shutil.copy(repo / MODEL / "1" / "model.onnx", partial)
    elsewhere = write_identity_model(tmp_path / "elsewhere", 16)
    (repo / MODEL / "3").symlink_to(elsewhere / MODEL / "1")
    versions = ModelRepository(repo, False, Metrics()).versions()[MODEL]
    assert versions[1] == ""
    assert versions[2].startswith("incomplete: no card.json")
    assert "links outside the repository" in versions[3] and "--allow-links-outside-repo" in versions[3]
    assert ModelRepository(repo, True, Metrics()).versions()[MODEL][3] == ""


def test_serving_json_is_read_again_only_when_it_changes_and_a_refusal_is_counted_once(repo):
    metrics = Metrics()
    repository = ModelRepository(repo, False, metrics)
    config, changed, _ = repository.config(MODEL, log_refusal=False)
    assert (config, changed) == (ServingConfig(), False)
    write_config(repo, {"max_batch_size": 4}, 10**18)
    config, changed, stamp = repository.config(MODEL, log_refusal=False)
    assert (config.max_batch_size, changed) == (4, True)
    assert repository.config(MODEL, log_refusal=False) == (config, False, stamp)
    write_config(repo, {"instances": 0}, 10**18 + 10**9)
    for _ in range(3):
        with pytest.raises(ModelLoadError, match="instances"):
            repository.config(MODEL, log_refusal=False)
    assert failures(metrics) == 1 and "instances" in repository.refusal(MODEL)
    assert repository.serving_config(MODEL).max_batch_size == 4  # what serves meanwhile
    write_config(repo, {"max_batch_size": 8}, 10**18 + 2 * 10**9)
    assert repository.config(MODEL, log_refusal=False)[0].max_batch_size == 8
    assert repository.refusal(MODEL) == ""


def test_an_override_replaces_serving_json_until_it_is_dropped(repo):
    repository = ModelRepository(repo, False, Metrics())
    write_config(repo, {"max_batch_size": 4}, 10**18)
    assert repository.reread(MODEL, ServingConfig(max_batch_size=2)) is None
    assert repository.config(MODEL, log_refusal=False)[0].max_batch_size == 2
    assert repository.serving_config(MODEL).max_batch_size == 2
    assert repository.reread(MODEL, None) == ServingConfig(max_batch_size=2)
    assert repository.config(MODEL, log_refusal=False)[0].max_batch_size == 4
