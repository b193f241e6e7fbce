"""The retrieval commands of ``offshelf`` against the real server: add (stable ids, --id-prefix, --skip-bad), get,
list, remove, search by image, id or vector with filters, and collection whiten."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from offshelf.clients import Client

from common import shared_photos

CORRUPT_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 cut short"


def offshelf(server, *args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "offshelf.clients.cli", *args, "--server", server.address],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def as_json(server, *args: str, cwd: pathlib.Path | None = None):
    result = offshelf(server, *args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def photo_folder(root: pathlib.Path, names: list[str]) -> pathlib.Path:
    """root/photos: real photos (links to the shared ones) under the given relative names."""
    for name, photo in zip(names, shared_photos("ukbench", len(names)), strict=True):
        (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "photos" / name).symlink_to(photo)
    return root / "photos"


def test_add_gives_the_same_ids_however_the_folder_is_named(server, client, tmp_path):
    names = ["a.jpg", "b.jpg", "sub/c.jpg"]
    folder = photo_folder(tmp_path, names)
    client.create_collection("cli-ids")
    try:
        first = as_json(server, "add", "photos/", "--collection", "cli-ids", cwd=tmp_path)
        assert (first["added"], first["count"]) == (3, 3)
        for spelling in ("./photos", str(folder), "photos/**/*.jpg"):
            again = as_json(server, "add", spelling, "--collection", "cli-ids", cwd=tmp_path)
            assert (again["added"], again["count"]) == (3, 3), spelling
        assert as_json(server, "add", "a.jpg", "--collection", "cli-ids", cwd=folder)["count"] == 3
        items = as_json(server, "list", "--collection", "cli-ids")
        expected = [("a.jpg", "photos"), ("b.jpg", "photos"), ("sub/c.jpg", "sub")]  # labels: parent folder names
        assert [(i["id"], i["label"]) for i in items] == expected
        prefixed = as_json(
            server, "add", "photos", "--collection", "cli-ids", "--id-prefix", "2/", "--concurrency", "2", cwd=tmp_path
        )
        assert prefixed["count"] == 6
        assert [i["id"] for i in as_json(server, "get", "2/b.jpg", "b.jpg", "--collection", "cli-ids")] == [
            "2/b.jpg",
            "b.jpg",
        ]
    finally:
        client.delete_collection("cli-ids")


def test_add_names_an_undecodable_file_and_skip_bad_leaves_it_out(server, client, tmp_path):
    folder = photo_folder(tmp_path, ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"])
    (folder / "p1x.jpg").write_bytes(CORRUPT_JPEG)
    bad = str(folder / "p1x.jpg")
    client.create_collection("cli-bad")
    try:
        refused = offshelf(server, "add", str(folder), "--collection", "cli-bad")
        assert refused.returncode == 1
        assert f"offshelf add: INVALID_ARGUMENT: {bad} is not a JPEG" in refused.stderr
        assert "--skip-bad" in refused.stderr and "item 2" not in refused.stderr
        skipping = offshelf(server, "add", str(folder), "--collection", "cli-bad", "--skip-bad", "--batch-size", "2")
        assert skipping.returncode == 0, skipping.stderr
        assert f"offshelf add: skipped {bad} is not a JPEG" in skipping.stderr
        assert skipping.stdout.strip() == "added 4 images (1 skipped); cli-bad holds 4"
        result = as_json(server, "add", str(folder), "--collection", "cli-bad", "--skip-bad")
        assert [s["file"] for s in result["skipped"]] == [bad] and result["count"] == 4
        (folder / "gone.jpg").symlink_to(folder / "deleted.jpg")
        unreadable = offshelf(server, "add", str(folder), "--collection", "cli-bad")
        assert unreadable.returncode == 2 and "gone.jpg" in unreadable.stderr
    finally:
        client.delete_collection("cli-bad")


@pytest.fixture(params=["embedded", "milvus"])
def store_server(request, server):
    """The shared server, or its twin with collections on Milvus."""
    return server if request.param == "embedded" else request.getfixturevalue("milvus_server")


@pytest.fixture
def store_client(store_server):
    with Client(store_server.address) as client:
        yield client


def test_get_list_remove_and_search_by_image_id_or_vector_with_filters(store_server, store_client, tmp_path):
    server, client = store_server, store_client
    photos = shared_photos("ukbench", 8)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((12, 1280)).astype(np.float32)
    client.create_collection("cli-items")
    try:
        client.add_images("cli-items", photos, labels=[f"object{i // 4}" for i in range(8)], progress=False)
        client.add(
            "cli-items",
            vectors=vectors,
            ids=[f"v{i:02d}" for i in range(12)],
            labels=["vector"] * 12,
            metadata=[{"shelf": str(i % 3)} for i in range(12)],
        )

        (item,) = as_json(server, "get", "v04", "--collection", "cli-items", "--vectors")
        assert (item["id"], item["label"], item["metadata"]) == ("v04", "vector", {"shelf": "1"})
        np.testing.assert_allclose(item["vector"], vectors[4] / np.linalg.norm(vectors[4]), atol=1e-5)
        text = offshelf(server, "get", "v04", "nope", "--collection", "cli-items")
        assert text.returncode == 1 and text.stdout.startswith("v04  [vector]  shelf=1")
        assert "NOT_FOUND" in text.stderr and "'nope'" in text.stderr

        every = as_json(server, "list", "--collection", "cli-items", "--page-size", "3")
        assert [i["id"] for i in every] == sorted([p.name for p in photos] + [f"v{i:02d}" for i in range(12)])
        shelved = as_json(server, "list", "--collection", "cli-items", "--meta", "shelf=0", "--meta", "shelf=2")
        assert [i["id"] for i in shelved] == [f"v{i:02d}" for i in range(12) if i % 3 != 1]
        objects = offshelf(server, "list", "--collection", "cli-items", "--label", "object1", "--page-size", "1")
        assert objects.stdout.split() == [w for p in photos[4:] for w in (p.name, "[object1]")]

        by_image = as_json(server, "search", str(photos[5]), "--collection", "cli-items", "-k", "3", "--label=object1")
        assert by_image[0]["id"] == photos[5].name and {h["label"] for h in by_image} == {"object1"}
        by_id = as_json(server, "search", "--id", photos[1].name, "--collection", "cli-items", "--min-score", "0.5")
        assert by_id[0]["id"] == photos[1].name and all(h["score"] >= 0.5 for h in by_id)
        assert {h["label"] for h in by_id} <= {"object0", "object1"}  # no random vector scores 0.5 against a photo
        np.save(tmp_path / "query.npy", vectors[7:8])
        by_vector = as_json(
            server, "search", "--vector", str(tmp_path / "query.npy"), "--collection", "cli-items", "--meta", "shelf=1"
        )
        assert by_vector[0]["id"] == "v07" and {h["metadata"]["shelf"] for h in by_vector} == {"1"}
        text = offshelf(server, "search", "--id", "v07", "--collection", "cli-items", "-k", "1")
        assert text.returncode == 0 and text.stdout.splitlines()[0] == "id v07" and "v07" in text.stdout.splitlines()[1]

        for usage in (
            ["search", "--collection", "cli-items"],
            ["search", str(photos[0]), "--id", "v01", "--collection", "cli-items"],
            ["remove", "--collection", "cli-items"],
            ["remove", "v01", "--label", "vector", "--collection", "cli-items"],
            ["list", "--collection", "cli-items", "--meta", "shelf"],
        ):
            assert offshelf(server, *usage).returncode == 2, usage
        np.save(tmp_path / "many.npy", vectors[:2])
        many = offshelf(server, "search", "--vector", str(tmp_path / "many.npy"), "--collection", "cli-items")
        assert many.returncode == 2 and "one vector" in many.stderr

        removed = as_json(server, "remove", "v00", "v01", "gone", "--collection", "cli-items")
        assert removed == {"collection": "cli-items", "removed": 2, "not_found": ["gone"], "count": 18}
        by_filter = offshelf(server, "remove", "--collection", "cli-items", "--label", "vector", "--meta", "shelf=2")
        assert by_filter.stdout.strip() == "removed 4 items; cli-items holds 14"
        assert as_json(server, "remove", "--collection", "cli-items", "--label", "object0")["count"] == 10

        whitened = as_json(server, "collection", "whiten", "cli-items", "--dim", "8")
        assert whitened["whitening_dim"] == 8
        assert as_json(server, "search", "--id", "v03", "--collection", "cli-items", "-k", "1")[0]["id"] == "v03"
        too_few = offshelf(server, "collection", "whiten", "cli-items", "--dim", "64")
        assert too_few.returncode == 1 and "FAILED_PRECONDITION" in too_few.stderr
    finally:
        client.delete_collection("cli-items")
