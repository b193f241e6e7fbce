"""The ``offshelf`` command line against the real server."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from importlib import metadata

import numpy as np

from offshelf.clients import Client

from common import ServerProcess, skimage_photo, write_identity_model


def offshelf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "offshelf.clients.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_embed_prints_sizes_and_top_labels(server):
    result = offshelf("embed", str(skimage_photo("coffee.png")), "--server", server.address)
    assert result.returncode == 0, result.stderr
    assert "embedding: dim 1280" in result.stdout
    assert "top: espresso (967)" in result.stdout


def test_embed_json_and_npy(server, tmp_path):
    photos = [str(skimage_photo("chelsea.png")), str(skimage_photo("rocket.jpg"))]
    as_json = offshelf("embed", *photos, "--server", server.address, "--output", "embedding", "--json")
    assert as_json.returncode == 0, as_json.stderr
    parsed = json.loads(as_json.stdout)
    assert [entry["image"] for entry in parsed] == photos
    npy = tmp_path / "vectors.npy"
    saved = offshelf("embed", *photos, "--server", server.address, "--output", "embedding", "--npy", str(npy))
    assert saved.returncode == 0, saved.stderr
    array = np.load(npy)
    assert array.shape == (2, 1280) and array.dtype == np.float32
    np.testing.assert_allclose(array[1], parsed[1]["outputs"]["embedding"], rtol=1e-6)


def test_models_lists_outputs(server):
    result = offshelf("models", "--server", server.address, "--json")
    assert result.returncode == 0, result.stderr
    (model,) = json.loads(result.stdout)
    assert [o["name"] for o in model["versions"][0]["outputs"]] == ["logits", "embedding"]


def test_exit_codes_tell_usage_server_and_unreachable_apart(server, tmp_path):
    assert offshelf("embed", str(tmp_path / "missing.jpg"), "--server", server.address).returncode == 2
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    refused = offshelf("embed", str(bad), "--server", server.address)
    assert refused.returncode == 1 and "INVALID_ARGUMENT: image 0 is not a JPEG" in refused.stderr
    unreachable = offshelf("models", "--server", "127.0.0.1:1", "--timeout", "2")
    assert unreachable.returncode == 3 and "UNAVAILABLE" in unreachable.stderr


def test_head_train_list_classify_and_delete(server, tmp_path):
    from common import shared_photos

    photos = tmp_path / "photos"
    for cls in ("ants", "bees"):
        (photos / cls).mkdir(parents=True)
        for photo in shared_photos(f"hymenoptera/train/{cls}", 6):
            (photos / cls / photo.name).symlink_to(photo)
    trained = offshelf(
        "head", "train", "cli-bugs", "--images", str(photos), "--kind", "ncm", "--server", server.address
    )
    assert trained.returncode == 0, trained.stderr
    assert "cli-bugs v1 (ncm): 2 classes, 12 examples" in trained.stdout
    assert "cli-bugs  v1  ncm  2 classes  succeeded" in offshelf("head", "list", "--server", server.address).stdout
    image = next((photos / "ants").iterdir())
    classified = offshelf("classify", str(image), "--head", "cli-bugs", "--json", "--server", server.address)
    assert json.loads(classified.stdout)[0]["top"][0]["label"] == "ants"
    assert offshelf("head", "delete", "cli-bugs", "--server", server.address).returncode == 0
    missing = offshelf("classify", str(image), "--head", "cli-bugs", "--server", server.address)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_collection_add_search_as_json(server, tmp_path):
    from common import shared_photos

    photos = shared_photos("ukbench", 8)

    def run_json(*args: str):
        result = offshelf(*args, "--server", server.address, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    created = run_json("collection", "create", "cli-json", "--index-type", "hnsw")
    assert created["name"] == "cli-json" and created["binding"]["dim"] == 1280
    assert run_json("add", str(photos[0].parent / "ukbench0000[0-7].jpg"), "--collection", "cli-json") == {
        "collection": "cli-json",
        "added": 8,
        "skipped": [],
        "count": 8,
    }
    assert "cli-json" in [c["name"] for c in run_json("collection", "list")]  # other files share the server
    assert int(run_json("collection", "show", "cli-json")["count"]) == 8
    hits = run_json("search", str(photos[5]), "--collection", "cli-json", "-k", "2")
    assert hits[0]["id"] == photos[5].name  # ids: paths relative to the glob's leading folder
    assert run_json("collection", "delete", "cli-json") == {"deleted": "cli-json"}
    assert run_json("health") == {"status": "SERVING"}
    missing = offshelf("collection", "show", "cli-json", "--server", server.address, "--json")
    assert missing.returncode == 1 and json.loads(missing.stderr)["error"] == "NOT_FOUND"


def test_every_command_has_help_with_json_and_connection_options():
    commands = [["embed"], ["models"], ["add"], ["get"], ["list"], ["remove"], ["search"], ["classify"], ["health"]]
    commands += [["eval"]] + [["collection", a] for a in ("create", "list", "show", "delete", "whiten")]
    commands += [["head", a] for a in ("train", "list", "show", "delete")]
    for command in commands:
        result = offshelf(*command, "--help")
        assert result.returncode == 0, command
        assert all(flag in result.stdout for flag in ("--json", "--tls", "--token", "--timeout")), command


def test_version_and_the_exit_codes_in_help():
    version = offshelf("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"offshelf {metadata.version('offshelf')}"
    usage = offshelf("--help").stdout
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "141 "):
        assert f"\n  {code}" in usage, code


def test_embed_and_classify_split_more_images_than_one_request_takes(server, client, tmp_path):
    sources = [skimage_photo(name) for name in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")]
    photos = []
    for i in range(40):  # the session server takes 32 images per request
        source = sources[i % len(sources)]
        photos.append(tmp_path / f"{i:02d}{source.suffix}")
        photos[-1].symlink_to(source)
    embedded = offshelf("embed", *map(str, photos), "--output", "embedding", "--json", "--server", server.address)
    assert embedded.returncode == 0, embedded.stderr
    entries = json.loads(embedded.stdout)
    assert [entry["image"] for entry in entries] == list(map(str, photos))
    vectors = np.array([entry["outputs"]["embedding"] for entry in entries])
    np.testing.assert_allclose(vectors[36:], vectors[:4], atol=1e-5)  # same photo, same vector, in order
    labels = ["cat", "cup", "rocket", "person"]
    client.train_head("cli-many", "ncm", images=sources * 2, labels=labels * 2)  # ncm: 2 examples per class
    client.wait_for_head("cli-many")
    try:
        classified = offshelf(
            "classify", *map(str, photos), "--head", "cli-many", "-k", "1", "--server", server.address
        )
    finally:
        client.delete_head("cli-many")
    assert classified.returncode == 0, classified.stderr
    lines = [line.split() for line in classified.stdout.splitlines()]  # "<path>: <label> <probability>"
    assert [(path, label) for path, label, _ in lines] == [
        (f"{photo}:", label) for photo, label in zip(photos, labels * 10, strict=True)
    ]


def test_output_piped_into_head_ends_quietly(server):
    command = [sys.executable, "-m", "offshelf.clients.cli", "models", "--server", server.address]
    script = (
        f"{shlex.join(command)} | head -1; echo first $PIPESTATUS >&2\n"
        # head -n 0 exits before reading: the pipe is closed when offshelf writes, so it surely breaks
        f"{shlex.join(command)} | head -n 0; echo closed $PIPESTATUS >&2\n"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("efficientnet-lite0 v1")
    assert result.stderr.splitlines() == ["first 0", "closed 141"]


def test_health_exit_code_tells_not_serving_apart(tmp_path):
    repo = write_identity_model(tmp_path / "repo", 4)
    server = ServerProcess(repo, tmp_path / "data", drain_seconds=60)
    try:
        server.wait_serving()
        server.process.send_signal(signal.SIGTERM)  # drains: NOT_SERVING for drain_seconds, still answering
        with Client(server.address) as client:
            deadline = time.monotonic() + 10
            while client.health() == "SERVING" and time.monotonic() < deadline:
                time.sleep(0.1)
        result = offshelf("health", "--server", server.address)
        assert (result.returncode, result.stdout.strip()) == (4, "NOT_SERVING")
    finally:
        server.kill()
