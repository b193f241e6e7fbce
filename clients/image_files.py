"""The file side of add_images: which image files a source names, the id and label each gets, their reading
a batch at a time, and naming or skipping the files that cannot be read or decoded."""

from __future__ import annotations

import glob
import itertools
import os
import pathlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tqdm import tqdm

from offshelf.clients.errors import InvalidArgument
from offshelf.protos.v1 import index_pb2

ImageSource = str | os.PathLike[str] | bytes
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
T = TypeVar("T")


def read_image(image: ImageSource) -> bytes:
    return image if isinstance(image, bytes) else pathlib.Path(image).read_bytes()


def image_paths(sources: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[pathlib.Path, str]]:
    """(file, its id) for files as given, folders searched recursively for images, glob patterns
    (``photos/**/*.jpg``) expanded; lazily, in sorted order, so that a folder of any size is listed as it is
    read. The id of a file found in a folder is its path relative to that folder (``a/b.jpg`` whether the folder
    was named ``photos``, ``./photos/`` or ``/home/me/photos``); of a glob's match, relative to the pattern's
    fixed leading folder; of a file named directly, its file name. FileNotFoundError for a source that is none
    of these."""
    for source in sources:
        path = pathlib.Path(source)
        if path.is_dir():
            yield from _walk(str(path), "")
        elif path.is_file():
            yield path, path.name
        elif glob.has_magic(str(source)):
            root = _glob_root(str(source))
            for match in sorted(glob.glob(str(source), recursive=True)):
                if os.path.isfile(match):
                    yield pathlib.Path(match), pathlib.PurePath(os.path.relpath(match, root)).as_posix()
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def image_files(sources: Iterable[str | os.PathLike[str]]) -> list[pathlib.Path]:
    """The files of image_paths, as a list."""
    return [path for path, _ in image_paths(sources)]


def _walk(folder: str, relative: str) -> Iterator[tuple[pathlib.Path, str]]:
    """A folder's images in sorted path order, with their paths relative to the folder first walked. Folders
    are entered (symbolic links to folders are not); every other entry with an image suffix is listed, so a
    broken link is reported when it is read rather than skipped unseen."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, f"{relative}{entry.name}/")
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            yield pathlib.Path(entry.path), relative + entry.name


def _glob_root(pattern: str) -> str:
    """The leading folders of a glob pattern that hold no wildcard: ``photos`` for ``photos/**/*.jpg``."""
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), pathlib.PurePath(pattern).parts))
    return str(pathlib.PurePath(*fixed)) if fixed else "."


@dataclass(frozen=True)
class ImageEntry:
    """One image of add_images: where its bytes come from, how messages name it, and its item fields."""

    source: pathlib.Path | bytes
    name: str
    id: str
    label: str
    metadata: dict[str, str] = field(default_factory=dict)


SkipReport = Callable[[str, str], None]
"""on_skip(file, message) of add_images: a file left out with skip_bad, and why (the message names it)."""


def report_skip(name: str, message: str) -> None:
    tqdm.write(f"skipped {message}", file=sys.stderr)


def read_batch(
    batch: Sequence[ImageEntry], skip_bad: bool
) -> tuple[list[index_pb2.Item], list[ImageEntry], list[tuple[str, str]]]:
    """The batch's items, its entries that could be read, and (file, message) for each one that could not
    (skip_bad; else the OSError, which names the file, is raised)."""
    items: list[index_pb2.Item] = []
    kept: list[ImageEntry] = []
    skipped: list[tuple[str, str]] = []
    for entry in batch:
        try:
            image = read_image(entry.source)
        except OSError as err:
            if not skip_bad:
                raise
            skipped.append((entry.name, f"{entry.name}: could not be read ({err.strerror or err})"))
            continue
        items.append(index_pb2.Item(id=entry.id, label=entry.label, metadata=entry.metadata, image=image))
        kept.append(entry)
    return items, kept, skipped


def drop_bad_item(
    err: InvalidArgument,
    items: list[index_pb2.Item],
    kept: list[ImageEntry],
    skip_bad: bool,
    skipped: list[tuple[str, str]],
) -> None:
    """The server refused a batch for one item (the error's item, from its status details): with skip_bad, drops
    it (to send the rest again) and records it; else raises InvalidArgument naming the file. Any other refusal is
    re-raised."""
    bad = err.item
    if bad is None or bad >= len(kept):
        raise err
    message = kept[bad].name + err.message.removeprefix(f"item {bad}")  # the server calls it "item <i>"
    if not skip_bad:
        raise InvalidArgument(f"{message} (skip_bad=True, or offshelf add --skip-bad, leaves such files out)") from err
    skipped.append((kept[bad].name, message))
    del items[bad], kept[bad]


def batches(entries: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to size entries, each taken from entries only when it is asked for."""
    iterator = iter(entries)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class AddRun:
    """What add_images gathers as batches finish, in any order: the ids of each batch, the first error, the
    skipped files (reported as they come) and the progress bar."""

    def __init__(self, bar: tqdm, on_skip: SkipReport) -> None:
        self.bar = bar
        self.on_skip = on_skip
        self.ids: dict[int, list[str]] = {}
        self.error: BaseException | None = None

    def finished(self, number: int, size: int, outcome: Callable[[], tuple[list[str], list[tuple[str, str]]]]) -> None:
        try:
            ids, skipped = outcome()
        except Exception as err:
            self.error = self.error or err
            return
        self.ids[number] = ids
        for name, message in skipped:
            self.on_skip(name, message)
        self.bar.update(size)

    def result(self) -> list[str]:
        if self.error is not None:
            raise self.error
        return [i for number in sorted(self.ids) for i in self.ids[number]]


def image_entries(
    sources: Iterable[ImageSource],
    ids: Sequence[str] | None,
    labels: Sequence[str] | Callable[[pathlib.Path], str] | None,
    id_prefix: str,
    metadata: Sequence[dict[str, str]] | Callable[[pathlib.Path], dict[str, str]] | None = None,
) -> Iterator[ImageEntry]:
    """add_images' images, lazily: files (image_paths' ids unless ids are given, id_prefix before each) and
    encoded bytes (ids given, else assigned by the server); labels and metadata one per image in order, or a
    function of a file's path. A file met again under the same id (a folder and a file in it) is sent once; two
    files with the same id are a ValueError: the second would replace the first."""
    owners: dict[str, str] = {}  # id -> the file (absolute) or bytes that has it
    position = 0
    for source in sources:
        found: Iterable[tuple[pathlib.Path | bytes, str, str]]
        if isinstance(source, bytes):
            found = [(source, f"image {position} (bytes)", "")]
        else:
            found = ((path, str(path), relative) for path, relative in image_paths([source]))
        for content, name, relative in found:
            given = ids[position] if ids else relative
            item_id = id_prefix + given if given else ""
            if callable(labels):
                label = labels(content) if isinstance(content, pathlib.Path) else ""
            else:
                label = labels[position] if labels else ""
            if callable(metadata):
                meta = metadata(content) if isinstance(content, pathlib.Path) else {}
            else:
                meta = metadata[position] if metadata else {}
            position += 1
            if item_id:
                owner = os.path.abspath(content) if isinstance(content, pathlib.Path) else name
                if item_id in owners:
                    if owners[item_id] == owner:
                        continue
                    raise ValueError(
                        f"{owners[item_id]} and {owner} both get the id {item_id!r}, so one would replace the "
                        "other: add their folder, or add them in separate calls with different id_prefix values "
                        "(offshelf add --id-prefix)"
                    )
                owners[item_id] = owner
            yield ImageEntry(content, name, item_id, label, meta)
