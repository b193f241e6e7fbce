"""The CLI's item fields and collection settings against the real server (the tiny model's): add's --label, --meta
and sidecar files, collection create's --dim and index parameters, list's --limit/--page-token, remove's --dry-run,
and request ids on errors (SDK and CLI)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest

from offshelf.clients import AsyncClient, Client, NotFound, Unavailable

from common import skimage_photo

MODEL = "random-projection-1280"


def offshelf(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "offshelf.clients.cli", *args, "--server", server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )


def as_json(server, *args: str):
    result = offshelf(server, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def client(tiny_server):
    with Client(tiny_server.address) as c:
        yield c


@pytest.fixture
def name(client):
    """A fresh collection name; the collection, if made, is deleted afterwards (the server is shared)."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    yield name
    if name in [c.name for c in client.list_collections()]:
        client.delete_collection(name)


def test_collection_create_takes_a_dimension_and_the_index_parameters(tiny_server, client, name):
    own = as_json(tiny_server, "collection", "create", name, "--dim", "8", "--index-type", "hnsw", "--hnsw-m", "12")
    assert own["binding"] == {**own["binding"], "model": "", "dim": 8}
    assert own["hnsw"] == {"m": 12, "ef_construction": 200, "ef_search": 128}
    listed = offshelf(tiny_server, "collection", "list").stdout
    assert re.search(rf"^{name}  0 items  hnsw  your own vectors \(8-d\)", listed, re.MULTILINE)
    client.delete_collection(name)

    flags = ["--nlist", "4", "--pq-m", "8", "--nbits", "4", "--nprobe", "2", "--train-size", "64"]
    ivfpq = as_json(
        tiny_server,
        "collection",
        "create",
        name,
        "--model",
        MODEL,
        "--index-type",
        "ivfpq",
        *flags,
        "--refine-factor",
        "3",
    )
    assert ivfpq["ivfpq"] == {"nlist": 4, "m": 8, "nbits": 4, "nprobe": 2, "train_size": 64, "refine_factor": 3}
    assert ivfpq["binding"]["model"] == MODEL and ivfpq["binding"]["dim"] == 1280
    client.delete_collection(name)

    mismatched = offshelf(tiny_server, "collection", "create", name, "--dim", "8", "--nlist", "4")
    assert mismatched.returncode == 2
    assert "--nlist is a parameter of --index-type ivfpq, not flat" in mismatched.stderr
    both = offshelf(tiny_server, "collection", "create", name, "--dim", "8", "--model", MODEL)
    assert both.returncode == 1 and "not both" in both.stderr
    assert name not in [c.name for c in client.list_collections()]


@pytest.fixture
def photos(tmp_path) -> pathlib.Path:
    """photos/a.png, photos/sub/b.png, photos/c.png"""
    for relative in ("a.png", "sub/b.png", "c.png"):
        (tmp_path / "photos" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / relative).symlink_to(skimage_photo("coffee.png"))
    return tmp_path / "photos"


def fields(client: Client, name: str) -> dict[str, tuple[str, dict[str, str]]]:
    return {item.id: (item.label, item.metadata) for item in client.iter_items(name)}


def test_add_sets_labels_and_metadata_from_flags_and_a_sidecar(tiny_server, client, name, photos, tmp_path):
    client.create_collection(name, model=MODEL)
    as_json(tiny_server, "add", str(photos), "--collection", name)
    assert fields(client, name)["sub/b.png"] == ("sub", {})  # by default: the parent folder's name

    csv = tmp_path / "fields.csv"
    csv.write_text("id,label,colour,shelf\na.png,cat,red,1\nsub/b.png,,blue,\nnot-there.png,x,y,z\n")
    added = as_json(
        tiny_server, "add", str(photos), "--collection", name, "--label", "mug", "--meta", "source=cam",
        "--meta", "colour=none", "--sidecar", str(csv),
    )  # fmt: skip
    assert (added["added"], added["count"], added["sidecar_unmatched"]) == (3, 3, ["not-there.png"])
    assert fields(client, name) == {
        "a.png": ("cat", {"source": "cam", "colour": "red", "shelf": "1"}),
        "sub/b.png": ("mug", {"source": "cam", "colour": "blue"}),  # an empty cell sets nothing
        "c.png": ("mug", {"source": "cam", "colour": "none"}),
    }
    text = offshelf(tiny_server, "add", str(photos), "--collection", name, "--sidecar", str(csv))
    assert text.returncode == 0 and "1 sidecar rows name no image, e.g. 'not-there.png'" in text.stderr

    sidecar = tmp_path / "fields.json"  # an image named by its file's path
    sidecar.write_text(json.dumps({str(photos / "c.png"): {"label": "dog", "metadata": {"n": 3}}}))
    as_json(tiny_server, "add", str(photos / "c.png"), "--collection", name, "--sidecar", str(sidecar))
    assert fields(client, name)["c.png"] == ("dog", {"n": "3"})

    csv.write_text("name,label\na.png,cat\n")
    refused = offshelf(tiny_server, "add", str(photos), "--collection", name, "--sidecar", str(csv))
    assert refused.returncode == 2 and "needs a column 'id' or 'file'" in refused.stderr


def test_list_stops_at_the_limit_and_the_page_token_continues(tiny_server, client, name):
    client.create_collection(name, dim=4)
    client.add(name, vectors=np.eye(4, dtype=np.float32).repeat(2, axis=0)[:7], ids=[f"i{n}" for n in range(7)])
    first = offshelf(tiny_server, "list", "--collection", name, "--limit", "3", "--page-size", "2", "--json")
    assert first.returncode == 0, first.stderr
    assert [item["id"] for item in json.loads(first.stdout)] == ["i0", "i1", "i2"]
    token = json.loads(first.stderr)["next_page_token"]
    rest = offshelf(tiny_server, "list", "--collection", name, "--page-token", token, "--limit", "10")
    assert rest.stdout.split() == ["i3", "i4", "i5", "i6"] and rest.stderr == ""
    text = offshelf(tiny_server, "list", "--collection", name, "--limit", "6")
    assert len(text.stdout.split()) == 6 and text.stderr.startswith("more items: --page-token ")


def test_remove_dry_run_prints_the_count_and_removes_nothing(tiny_server, client, name):
    client.create_collection(name, dim=4)
    labels = ["blurry", "sharp", "blurry", "blurry"]
    client.add(name, vectors=np.eye(4), ids=["a", "b", "c", "d"], labels=labels)
    dry = offshelf(tiny_server, "remove", "--collection", name, "--label", "blurry", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == f"would remove 3 items from {name} (dry run: nothing removed)"
    by_ids = as_json(tiny_server, "remove", "a", "b", "nope", "--collection", name, "--dry-run")
    assert by_ids == {"collection": name, "would_remove": 2, "dry_run": True}
    assert client.get_collection(name).count == 4
    assert as_json(tiny_server, "remove", "--collection", name, "--label", "blurry")["removed"] == 3


def test_errors_carry_the_request_id_and_the_cli_prints_it(tiny_server, client):
    with pytest.raises(NotFound) as made_up:
        client.get_collection("no-such-collection")
    assert re.fullmatch(r"[0-9a-f]{32}", made_up.value.request_id)  # the server's, from the trailing metadata
    with Client(tiny_server.address, request_id="sdk-7") as chosen, pytest.raises(NotFound) as refused:
        chosen.get_collection("no-such-collection")
    assert refused.value.request_id == "sdk-7"

    async def aio() -> str:
        async with AsyncClient(tiny_server.address, request_id="aio-7") as aclient:
            try:
                await aclient.get_collection("no-such-collection")
            except NotFound as err:
                return err.request_id
        return ""

    assert asyncio.run(aio()) == "aio-7"
    with Client("127.0.0.1:1", timeout=2, retries=0, request_id="sent-7") as nobody, pytest.raises(Unavailable) as down:
        nobody.health()
    assert down.value.request_id == "sent-7"  # no answer: the id it sent

    text = offshelf(tiny_server, "collection", "show", "no-such-collection", "--request-id", "cli-7")
    assert text.returncode == 1 and text.stderr.rstrip().endswith("(request id cli-7)")
    assert any(e.get("request_id") == "cli-7" and e.get("code") == "NOT_FOUND" for e in tiny_server.logs)
    as_error = offshelf(tiny_server, "collection", "show", "no-such-collection", "--json")
    assert re.fullmatch(r"[0-9a-f]{32}", json.loads(as_error.stderr)["request_id"])
