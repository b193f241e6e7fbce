"""Retrieval evaluation through the real service on real photos: UKBench N-S and Holidays mAP."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from offshelf.clients import evaluate

from common import SHARED_DATA, shared_photos


def offshelf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "offshelf.clients.cli", *args], capture_output=True, text=True, timeout=600
    )


# Today's UKBench N-S of EfficientNet-Lite0's embedding on the 500 images of ../shared/data/ukbench: 3.900, and 3.928
# with flip (docs/benchmarks.md, printed by `offshelf eval ukbench [--flip]`). The floor leaves 0.05 (about 1 %) of
# margin, for onnxruntime versions and execution providers that round differently.
NS_FLOOR = 3.85


def test_ukbench_ns_score_of_the_default_embedding_plain_and_with_flip(client):
    dataset = evaluate.ukbench(SHARED_DATA / "ukbench") if (SHARED_DATA / "ukbench").is_dir() else None
    if dataset is None:
        pytest.skip(f"{SHARED_DATA / 'ukbench'} is absent")
    with evaluate.temporary_collection(client, dataset, "efficientnet-lite0", "embedding", "flat") as name:
        plain = evaluate.ns_score(client, name, dataset).score
        flipped = evaluate.ns_score(client, name, dataset, flip=True).score
    assert len(dataset.queries) == 500
    assert plain >= NS_FLOOR, plain
    assert flipped >= NS_FLOOR, flipped


def test_the_eval_command_prints_json_writes_a_plot_and_cleans_up(server, tmp_path):
    folder = tmp_path / "ukbench"
    folder.mkdir()
    for photo in shared_photos("ukbench", 100):  # 25 objects: the command, not the score, is under test here
        (folder / photo.name).symlink_to(photo)
    plot = tmp_path / "ns.png"
    result = offshelf("eval", "ukbench", str(folder), "--server", server.address, "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    score = json.loads(result.stdout)
    assert score["images"] == score["queries"] == 100
    assert 3.5 <= score["score"] <= 4.0, score["score"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "eval-" not in offshelf("collection", "list", "--server", server.address).stdout  # cleaned up


def test_holidays_map_on_a_holidays_layout_folder(server, tmp_path):
    photos = shared_photos("ukbench", 200)
    folder = tmp_path / "holidays"
    folder.mkdir()
    for n, photo in enumerate(photos):  # 50 scenes of 4 photos: 100000.jpg ... 100003.jpg, 100100.jpg, ...
        (folder / f"{100000 + (n // 4) * 100 + n % 4:06d}.jpg").symlink_to(photo)
    dataset = evaluate.holidays(folder)
    assert len(dataset.queries) == 50 and dataset.groups[:5] == [1000, 1000, 1000, 1000, 1001]
    plot = tmp_path / "pr.png"
    result = offshelf("eval", "holidays", str(folder), "--server", server.address, "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    score = json.loads(result.stdout)
    assert score["queries"] == 50
    assert 0.9 <= score["score"] <= 1.0
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_a_folder_without_the_layout_is_a_usage_error(server, tmp_path):
    result = offshelf("eval", "ukbench", str(tmp_path), "--server", server.address)
    assert result.returncode == 2 and "holds no file named like" in result.stderr
