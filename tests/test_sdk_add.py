"""add_images against the real server: ids that do not depend on how a folder is named (so adding again changes
nothing), files read as their batch is sent, several requests in flight, and files that cannot be read or decoded
named (or left out with skip_bad)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import re
import urllib.request

import pytest

from offshelf.clients import AsyncClient, Client, InvalidArgument

from common import shared_photos

CORRUPT_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 cut short"


@contextlib.contextmanager
def collection(client: Client, name: str):
    client.create_collection(name)
    try:
        yield name
    finally:
        client.delete_collection(name)


def photo_folder(root: pathlib.Path, names: list[str]) -> pathlib.Path:
    """root/photos: real photos (links to the shared ones) under the given relative names."""
    for name, photo in zip(names, shared_photos("ukbench", len(names)), strict=True):
        (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "photos" / name).symlink_to(photo)
    return root / "photos"


def stored_ids(client: Client, name: str) -> list[str]:
    return [item.id for item in client.iter_items(name)]


def test_ids_are_paths_in_the_folder_so_adding_again_by_any_spelling_changes_nothing(
    client, server, tmp_path, monkeypatch
):
    names = ["a.jpg", "b.jpg", "sub/c.jpg", "sub/deeper/d.jpg"]
    folder = photo_folder(tmp_path, names)
    monkeypatch.chdir(tmp_path)
    with collection(client, "sdk-add-ids") as name:
        added = client.add_images(name, ["photos"], progress=False)
        assert added == names and stored_ids(client, name) == names
        spellings = [["./photos/"], [str(folder.absolute())], ["photos/**/*.jpg"], ["photos/a.jpg"]]
        for spelling in spellings + [["photos", "./photos/a.jpg"]]:  # a.jpg met twice: sent once
            assert client.add_images(name, spelling, progress=False, concurrency=2, batch_size=5)
            assert stored_ids(client, name) == names, spelling
        assert client.add_images(name, ["photos/sub"], progress=False) == ["c.jpg", "deeper/d.jpg"]  # its own folder
        client.remove(name, ["c.jpg", "deeper/d.jpg"])

        async def add_again() -> list[str]:
            async with AsyncClient(server.address) as aclient:
                return await aclient.add_images(name, [folder], progress=False)

        assert asyncio.run(add_again()) == names and client.get_collection(name).count == len(names)
        client.add_images(name, ["photos"], id_prefix="again/", progress=False)
        assert stored_ids(client, name) == sorted(names + [f"again/{n}" for n in names])


def test_files_of_one_call_that_would_get_the_same_id_are_refused_before_anything_is_sent(client, tmp_path):
    photos = shared_photos("ukbench", 2)
    for folder, photo in zip(("x", "y"), photos, strict=True):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.jpg").symlink_to(photo)
    with collection(client, "sdk-add-same") as name:
        with pytest.raises(ValueError, match="both get the id 'same.jpg'"):
            client.add_images(name, [tmp_path / "x" / "same.jpg", tmp_path / "y" / "same.jpg"], progress=False)
        assert client.get_collection(name).count == 0
        client.add_images(name, [tmp_path], progress=False)  # their folder: x/same.jpg and y/same.jpg
        assert stored_ids(client, name) == ["x/same.jpg", "y/same.jpg"]


def test_batches_are_sent_while_the_files_are_still_being_listed(client, server):
    """Files are read when their batch is built: never every file first. A source that is a generator shows it:
    by the time it hands over the 33rd file (four batches of 8 sent, as many as are in flight by default), a batch
    of the first ones has been acknowledged."""
    photos = shared_photos("ukbench", 40)
    seen: dict[int, int] = {}

    with collection(client, "sdk-add-stream") as name, Client(server.address) as observer:

        def listed():
            for i, photo in enumerate(photos):
                if i == 32:
                    seen[i] = observer.get_collection(name).count
                yield photo

        added = client.add_images(name, listed(), batch_size=8, progress=False)
        assert len(added) == 40 and client.get_collection(name).count == 40
    assert seen[32] >= 8


def batch_sizes(server) -> tuple[float, float]:
    """(images, inference batches) the server's model has run so far."""
    text = urllib.request.urlopen(server.metrics_url).read().decode()

    def sample(suffix: str) -> float:
        found = re.search(rf'^offshelf_batch_size_images_{suffix}{{model="efficientnet-lite0/1"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    return sample("sum"), sample("count")


def test_several_requests_are_in_flight_so_the_server_batches_them_together(client, server):
    """One image per request: sent one at a time, every inference batch holds one image; with four requests in
    flight (the default) the server's batcher merges them."""
    photos = shared_photos("ukbench", 32)
    with collection(client, "sdk-add-concurrent") as name:
        images, batches = batch_sizes(server)
        client.add_images(name, photos, batch_size=1, progress=False)
        more_images, more_batches = batch_sizes(server)
        assert client.get_collection(name).count == 32
    assert more_images - images == 32
    assert more_batches - batches < 32  # some inference batch held more than one image


@pytest.fixture
def damaged(tmp_path) -> pathlib.Path:
    """Six real photos, a corrupt JPEG second in the second batch of three, and a link to a file that is gone."""
    folder = photo_folder(tmp_path, ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg", "p5.jpg"])
    (folder / "p3x.jpg").write_bytes(CORRUPT_JPEG)
    return folder


def test_an_undecodable_file_is_named_and_skip_bad_leaves_it_out(client, server, damaged):
    with collection(client, "sdk-add-bad") as name:
        with pytest.raises(InvalidArgument) as refused:
            client.add_images(name, [damaged], batch_size=3, progress=False)
        assert refused.value.message.startswith(f"{damaged / 'p3x.jpg'} ")
        assert "item 1" not in refused.value.message
        skipped: list[tuple[str, str]] = []
        added = client.add_images(
            name, [damaged], batch_size=3, skip_bad=True, on_skip=lambda *s: skipped.append(s), progress=False
        )
        assert added == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg", "p5.jpg"]  # p3 and p4 went in again
        assert [file for file, _ in skipped] == [str(damaged / "p3x.jpg")]
        assert skipped[0][1].startswith(str(damaged / "p3x.jpg"))
        assert stored_ids(client, name) == added

        (damaged / "gone.jpg").symlink_to(damaged / "deleted.jpg")
        with pytest.raises(FileNotFoundError, match="gone.jpg"):
            client.add_images(name, [damaged], skip_bad=False, progress=False)

        async def add_skipping() -> list[str]:
            async with AsyncClient(server.address) as aclient:
                return await aclient.add_images(
                    name, [damaged], batch_size=3, skip_bad=True, on_skip=lambda *s: skipped.append(s), progress=False
                )

        skipped.clear()
        assert asyncio.run(add_skipping()) == added
        assert sorted(file for file, _ in skipped) == [str(damaged / "gone.jpg"), str(damaged / "p3x.jpg")]
        assert client.get_collection(name).count == 6
