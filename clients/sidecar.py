"""Labels and metadata for ``offshelf add`` from a sidecar file: CSV or JSON, one row per image.

CSV: a header row; the column ``id`` (or ``file``) names the image, ``label`` is its label, every other column a
metadata key; an empty cell sets nothing. JSON: a list of objects ``{"id" or "file": ..., "label": ...,
"metadata": {...}}``, or one object ``{image: {"label": ..., "metadata": {...}}}``. An image is named by its id
as ``offshelf add`` derives it (its path in the folder added, without --id-prefix) or by its file's path.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from dataclasses import dataclass, field


class SidecarError(ValueError):
    """A sidecar that cannot be used as it is; the message names the file and what to fix."""


@dataclass
class Fields:
    label: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def read_sidecar(path: pathlib.Path) -> dict[str, Fields]:
    """Image name -> its fields, from a .csv or .json file."""
    if path.suffix.lower() == ".csv":
        return _csv(path)
    if path.suffix.lower() == ".json":
        return _json(path)
    raise SidecarError(f"--sidecar {path}: name a .csv or .json file")


def _csv(path: pathlib.Path) -> dict[str, Fields]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        key = next((c for c in ("id", "file") if c in columns), None)
        if key is None:
            raise SidecarError(f"--sidecar {path}: the header row needs a column 'id' or 'file' naming each image")
        rows: dict[str, Fields] = {}
        for line, row in enumerate(reader, 2):
            if None in row:
                raise SidecarError(f"--sidecar {path} line {line}: more cells than the header has columns")
            name = row.pop(key) or ""
            if not name:
                raise SidecarError(f"--sidecar {path} line {line}: the {key!r} cell is empty")
            label = row.pop("label", None) or None
            _put(rows, name, Fields(label, {k: v for k, v in row.items() if v}), path)
    return rows


def _json(path: pathlib.Path) -> dict[str, Fields]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SidecarError(f"--sidecar {path}: not JSON ({err})") from err
    if isinstance(data, dict):
        entries = [({"id": name, **value} if isinstance(value, dict) else value) for name, value in data.items()]
    elif isinstance(data, list):
        entries = data
    else:
        raise SidecarError(f"--sidecar {path}: a JSON list of objects, or an object of image -> fields")
    rows: dict[str, Fields] = {}
    for i, entry in enumerate(entries):
        where = f"--sidecar {path} entry {i}"
        if not isinstance(entry, dict):
            raise SidecarError(f"{where}: an object with 'id' or 'file', 'label' and 'metadata'")
        name = entry.get("id", entry.get("file"))
        label, metadata = entry.get("label"), entry.get("metadata", {})
        if not isinstance(name, str) or not name:
            raise SidecarError(f"{where}: 'id' or 'file' must name the image")
        if label is not None and not isinstance(label, str):
            raise SidecarError(f"{where}: 'label' must be a string")
        if not isinstance(metadata, dict) or not all(isinstance(v, str | int | float) for v in metadata.values()):
            raise SidecarError(f"{where}: 'metadata' must be an object of strings")
        _put(rows, name, Fields(label, {k: str(v) for k, v in metadata.items()}), path)
    return rows


def _put(rows: dict[str, Fields], name: str, fields: Fields, path: pathlib.Path) -> None:
    if name in rows:
        raise SidecarError(f"--sidecar {path}: {name!r} appears twice")
    rows[name] = fields


def match(rows: dict[str, Fields], images: list[tuple[pathlib.Path, str]]) -> tuple[dict[str, Fields], list[str]]:
    """Each image's fields, by its absolute path, for the (file, id) pairs of image_paths; and the rows that name
    no image (an image is named by its id, or by its file's path)."""
    by_path = {os.path.abspath(name): name for name in rows}
    found: dict[str, Fields] = {}
    used: set[str] = set()
    for path, item_id in images:
        absolute = os.path.abspath(path)
        name = item_id if item_id in rows else by_path.get(absolute)
        if name is not None:
            found[absolute] = rows[name]
            used.add(name)
    return found, [name for name in rows if name not in used]
