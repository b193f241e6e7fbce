"""What a collection is, in the engine's own types: its binding (what its vectors are), metric, index type and
parameters, whitening; and what info() reports. Stored as JSON (the embedded store's SQLite row, a Milvus table's
description) in the layout protobuf's JSON gave the wire's Collection message, so collections written before read
as they are; the doors convert to and from their own messages."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any

from offshelf.service.models.binding import Binding


class Metric(enum.IntEnum):
    """The wire's Metric has the same values."""

    INNER_PRODUCT = 0  # on L2-normalised vectors: cosine similarity, higher is nearer
    L2 = 1  # squared Euclidean distance, lower is nearer


@dataclass
class HnswParams:
    m: int = 0
    ef_construction: int = 0
    ef_search: int = 0


@dataclass
class IvfPqParams:
    nlist: int = 0
    m: int = 0
    nbits: int = 0
    nprobe: int = 0
    train_size: int = 0
    refine_factor: int = 0


@dataclass
class CollectionConfig:
    name: str
    binding: Binding = field(default_factory=Binding)
    metric: Metric = Metric.INNER_PRODUCT
    index_type: str = ""
    hnsw: HnswParams = field(default_factory=HnswParams)
    ivfpq: IvfPqParams = field(default_factory=IvfPqParams)
    whitening_dim: int = 0  # the output dimension of its PCA-whitening (Milvus: the table's generation's)
    thumbnail_size: int = 0  # the longer side of the JPEG kept of each image item; 0: none kept

    def to_json(self) -> str:
        """Protobuf's JSON of the wire's Collection with field names kept: defaults left out, 64-bit integers as
        strings, enums by name."""
        fields = {
            "name": self.name,
            "binding": _without_defaults(dataclasses.asdict(self.binding), frozenset({"version"})),
            "metric": f"METRIC_{self.metric.name}",
            "index_type": self.index_type,
            "hnsw": _without_defaults(dataclasses.asdict(self.hnsw)),
            "ivfpq": _without_defaults(dataclasses.asdict(self.ivfpq)),
            "whitening_dim": self.whitening_dim,
            "thumbnail_size": self.thumbnail_size,
        }
        if self.metric == Metric.INNER_PRODUCT:
            del fields["metric"]
        return json.dumps(_without_defaults(fields))

    @classmethod
    def from_json(cls, text: str) -> CollectionConfig:
        """Reads what to_json wrote, and protobuf's JSON with camelCase names (older collection.json files)."""
        stored = _snake_case(json.loads(text))
        binding = stored.get("binding", {})
        return cls(
            name=str(stored.get("name", "")),
            binding=Binding(**{**binding, "version": int(binding.get("version", 0))}),
            metric=Metric[str(stored.get("metric", "METRIC_INNER_PRODUCT")).removeprefix("METRIC_")],
            index_type=str(stored.get("index_type", "")),
            hnsw=HnswParams(**stored.get("hnsw", {})),
            ivfpq=IvfPqParams(**stored.get("ivfpq", {})),
            whitening_dim=int(stored.get("whitening_dim", 0)),
            thumbnail_size=int(stored.get("thumbnail_size", 0)),
        )


@dataclass(frozen=True)
class CollectionInfo:
    """A collection now: its configuration (whitening_dim: 0 when not whitened), items, bytes on disk (0 on
    Milvus) and, for IVF-PQ, whether the index is trained (before, searches are exact)."""

    config: CollectionConfig
    count: int
    bytes_on_disk: int = 0
    trained: bool = False


def _without_defaults(fields: dict[str, Any], as_strings: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields protobuf's JSON would write: none left at its default; as_strings: 64-bit integers."""
    return {
        key: str(value) if key in as_strings else value for key, value in fields.items() if value not in ("", 0, {})
    }


def _snake_case(value: Any) -> Any:
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower(): _snake_case(v) for key, v in value.items()}
    return value
