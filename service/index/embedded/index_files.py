"""The files of an embedded collection's folder besides SQLite: ``index-<seq>.faiss``, the FAISS index as of write
``seq``, written whole (a temporary file, fsynced, renamed, the older one removed), and the folder's size."""

from __future__ import annotations

import os
import pathlib

import numpy as np


def fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def folder_bytes(directory: pathlib.Path) -> int:
    """Bytes of the files in the folder; a file the index saver replaces meanwhile counts as absent, and a folder
    deleted meanwhile (the collection with it) holds nothing."""
    try:
        paths = list(directory.iterdir())
    except FileNotFoundError:
        return 0
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:
            pass
    return total


def file_seq(path: pathlib.Path) -> int:
    """The write an index file holds, from its name."""
    return int(path.stem.split("-")[1])


def newest_index_file(directory: pathlib.Path) -> pathlib.Path | None:
    files = sorted(directory.glob("index-*.faiss"), key=file_seq)
    return files[-1] if files else None


def write_index_file(directory: pathlib.Path, seq: int, data: np.ndarray) -> None:
    """Writes a serialised index as index-<seq>.faiss, durably, and removes the older files."""
    path = directory / f"index-{seq}.faiss"
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        data.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fsync_dir(directory)
    for older in directory.glob("index-*.faiss"):
        if older != path:
            older.unlink(missing_ok=True)
