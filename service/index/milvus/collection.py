"""A collection on Milvus: the distributed store, so that any number of stateless replicas share collections.

Every replica addresses a collection by the Milvus alias ``offshelf_collection_<key>`` (key: sha256 of the name;
Milvus names allow only letters, digits and '_'). The alias points at a table ``offshelf_table_<key>_<generation>``
with the fields id (the primary key), label, metadata (JSON) and vector, and the collection's configuration (name,
binding, index parameters, whitening dimension) as its description. Milvus indexes the vectors with FLAT, HNSW or
IVF_PQ: the index types and parameters offshelf's own store uses. IVF_PQ tables also keep each vector as added
(``raw``, see keeps_raw), from which candidates are re-ranked.

PCA-whitening makes a new generation: the whitened vectors are what Milvus indexes, so the table of a whitened
generation also keeps each item's vector as added (``raw``, base64 float32: Milvus 2.3 allows one vector field) for
GetItems, search by id and whitening again; the whitening itself is a blob (milvus/blobs.py). Training renames the
table to ``offshelf_migrating_<key>_<generation>`` first: writes from every replica then find no table of their
generation and are answered UNAVAILABLE until the alias points at the new generation, so none is lost; searches go
on against the renamed table meanwhile. A replica whose table has gone looks up the alias again (MilvusCollection
methods do this once), so a replica never writes with another generation's whitening. A write that meets a renamed
table finishes or undoes a whitening whose replica died (whitening.py).

A write is acknowledged with the count afterwards, read with Strong consistency: that read waits until Milvus serves
the write, so every later read sees it, through any replica and at any consistency level (with one in-memory
replica of the collection, Milvus's default). Item lookups (GetItems, search by id, the lookups behind Remove) are
Strong too; searches and collection counts use the server's setting (Bounded by default, see settings.py) and do
not wait. IVF_PQ candidates are
re-ranked by their exact scores (search.py) (Milvus's IVF_PQ has no refine step): Milvus returns refine_factor x k
candidates with their vectors as added.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient

from offshelf.service.errors import FailedPrecondition, InvalidArgument, Unavailable
from offshelf.service.index.config import CollectionConfig, CollectionInfo, Metric
from offshelf.service.index.contract import Filter, Hit, Item, Row, StoreBase
from offshelf.service.index.milvus.calls import TableGone, milvus_errors, quoted
from offshelf.service.index.milvus.search import both, expression, from_text, search, to_text
from offshelf.service.index.milvus.thumbnails import Thumbnails
from offshelf.service.index.vectors import Whitening, to_index_space

if TYPE_CHECKING:
    from offshelf.service.index.milvus.blobs import Blobs

T = TypeVar("T")
ALIAS, TABLE = "offshelf_collection_", "offshelf_table_"
MIGRATING, RETIRED = "offshelf_migrating_", "offshelf_retired_"  # tables being whitened
MAX_ID_BYTES, MAX_LABEL_BYTES = 256, 65535  # the id and label fields' VARCHAR lengths
MAX_RAW_DIM = 12000  # float32 values whose base64 fits in a VARCHAR of 65535
PAGE = 4096  # items per query when reading many
FENCE_SECONDS = 30.0  # the default of the setting milvus_whitening_fence_seconds


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:40]


def physical_name(name: str) -> str:
    """The alias every replica addresses the collection by."""
    return ALIAS + key(name)


def table_name(name: str, generation: int) -> str:
    return f"{TABLE}{key(name)}_{generation}"


def whitening_blob(name: str, generation: int) -> str:
    return f"whitening/{key(name)}/{generation}"


def index_params(client: MilvusClient, config: CollectionConfig):
    metric = "L2" if config.metric == Metric.L2 else "IP"
    params = client.prepare_index_params()
    if config.index_type == "hnsw":
        hnsw = config.hnsw
        params.add_index("vector", index_type="HNSW", metric_type=metric, M=hnsw.m, efConstruction=hnsw.ef_construction)
    elif config.index_type == "ivfpq":
        ivf = config.ivfpq
        params.add_index("vector", index_type="IVF_PQ", metric_type=metric, nlist=ivf.nlist, m=ivf.m, nbits=ivf.nbits)
    else:
        params.add_index("vector", index_type="FLAT", metric_type=metric)
    return params


def raw_field(config: CollectionConfig) -> str:
    """The field that holds the vectors as added (before whitening)."""
    return "raw" if keeps_raw(config) else "vector"


def raw_vectors(rows: list[dict], config: CollectionConfig) -> np.ndarray:
    """The vectors as added (before whitening) of query rows."""
    if keeps_raw(config):
        vectors = [from_text(row["raw"]) for row in rows]
    else:
        vectors = [np.asarray(row["vector"], np.float32) for row in rows]
    return np.stack(vectors) if vectors else np.zeros((0, config.binding.dim), np.float32)


def raw_pages(collection: MilvusCollection) -> Iterator[np.ndarray]:
    """Every item's vector as added, a page at a time."""
    for page in collection._pages("", [raw_field(collection.config)]):
        yield raw_vectors(page, collection.config)


def keeps_raw(config: CollectionConfig) -> bool:
    """Whether the table keeps each vector as added in the field ``raw``: when what Milvus indexes is whitened, and
    for IVF_PQ, whose candidates are re-ranked from it (base64 decodes far faster than the float lists pymilvus
    returns for a vector field, and needs no raw data from a PQ index)."""
    return bool(config.whitening_dim) or config.index_type == "ivfpq"


def create_table(client: MilvusClient, config: CollectionConfig, table: str) -> None:
    """An empty, loaded table for the configuration (whitened when config.whitening_dim is set)."""
    if keeps_raw(config) and config.binding.dim > MAX_RAW_DIM:
        raise InvalidArgument(f"on Milvus, ivfpq collections hold vectors of at most {MAX_RAW_DIM} values")
    schema = MilvusClient.create_schema(
        auto_id=False,
        enable_dynamic_field=False,
        description=config.to_json(),
    )
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
    schema.add_field("label", DataType.VARCHAR, max_length=MAX_LABEL_BYTES)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=config.whitening_dim or config.binding.dim)
    if keeps_raw(config):
        schema.add_field("raw", DataType.VARCHAR, max_length=65535)
    with milvus_errors(config.name):
        client.create_collection(
            table, schema=schema, index_params=index_params(client, config), consistency_level="Strong"
        )


class MilvusCollection(StoreBase):
    """The store contract (index/contract.py) on one generation's table of a Milvus collection.
    `reopen(name)` looks the collection up again (the registry's), for when the table is gone."""

    def __init__(
        self,
        client: MilvusClient,
        blobs: Blobs,
        config: CollectionConfig,
        table: str,
        whitening: Whitening | None,
        consistency: str,
        reopen: Callable[[str], MilvusCollection],
        fence_seconds: float = FENCE_SECONDS,
    ):
        super().__init__(config)
        self.client, self.blobs = client, blobs
        self.kept = Thumbnails(blobs, config)
        self.table = table
        self.generation = int(table.rsplit("_", 1)[1])
        self.migrating = table.startswith((MIGRATING, RETIRED))
        self.whitening = whitening
        self.consistency = consistency
        self.reopen = reopen
        self.fence_seconds = fence_seconds
        self._known_keys: set[str] = set()  # metadata keys seen on an item: filters on them need no check
        self.unsaved_writes = 0  # Milvus persists writes itself: no local index to save

    def _current(self, operation: Callable[[MilvusCollection], T], write: bool = False) -> T:
        """Runs the operation on this table, or once more on the collection's table now if this one is gone."""
        collection = self
        for attempt in range(2):
            if write and collection.migrating:
                collection = collection._recovered()
            if write and collection.migrating:
                raise Unavailable(
                    f"collection {self.name!r} is being re-indexed with a new whitening; writes resume when it is "
                    "done: retry in a few seconds"
                )
            try:
                return operation(collection)
            except TableGone:
                if attempt:
                    raise
                collection = self.reopen(self.name)
        raise AssertionError("unreachable")

    def _recovered(self) -> MilvusCollection:
        """The collection after finishing or undoing a whitening whose replica died (if it did)."""
        from offshelf.service.index.milvus import whitening as milvus_whitening  # it builds on this module

        milvus_whitening.recover(self.client, self.blobs, self.name)
        return self.reopen(self.name)

    def close(self) -> None:
        pass  # the client belongs to the registry

    # --- reads -----------------------------------------------------------------------------------

    def _count(self, where: str, consistency: str = "Strong") -> int:
        with milvus_errors(self.name):
            rows = self.client.query(
                self.table, filter=where, output_fields=["count(*)"], consistency_level=consistency
            )
        return int(rows[0]["count(*)"])

    def mean(self) -> np.ndarray | None:
        return None  # the drift reference would need every vector read back from Milvus: not measured here

    def info(self) -> CollectionInfo:
        return self._current(MilvusCollection._info)

    def _info(self) -> CollectionInfo:
        count = self._count("", self.consistency)  # read as searches are: listings need not wait
        trained = False
        if self.config.index_type == "ivfpq":
            with milvus_errors(self.name):
                trained = int(self.client.describe_index(self.table, "vector").get("indexed_rows", 0)) > 0
        return CollectionInfo(self.config, count, trained=trained)

    def _query(
        self, where: str, fields: list[str], limit: int | None = None, consistency: str = "Strong"
    ) -> list[dict]:
        with milvus_errors(self.name):
            return list(
                self.client.query(
                    self.table, filter=where, output_fields=fields, limit=limit, consistency_level=consistency
                )
            )

    def _pages(self, where: str, fields: list[str]) -> Iterator[list[dict]]:
        """Every selected item, PAGE at a time in id order."""
        after = ""
        while page := self._query(both(where, f"id > {quoted(after)}"), ["id", *fields], PAGE):
            yield page
            after = page[-1]["id"]

    def labelled_vectors(self) -> tuple[np.ndarray, list[str]]:
        def read(c: MilvusCollection) -> tuple[np.ndarray, list[str]]:
            where = expression(Filter(labelled=True))
            rows = [row for page in c._pages(where, ["label", raw_field(c.config)]) for row in page]
            return raw_vectors(rows, c.config), [row["label"] for row in rows]

        return self._current(read)

    def stored_vectors(self) -> np.ndarray:
        """Every item's vector as added (before any whitening), (count, dim)."""
        return self._current(lambda c: np.concatenate([*raw_pages(c), np.zeros((0, c.dim), np.float32)]))

    def get(self, item_ids: list[str]) -> dict[str, tuple[Row, np.ndarray]]:
        return self._current(lambda c: c._get(item_ids))

    def _get(self, item_ids: list[str]) -> dict[str, tuple[Row, np.ndarray]]:
        found: dict[str, tuple[Row, np.ndarray]] = {}
        unique = list(dict.fromkeys(item_ids))
        for start in range(0, len(unique), PAGE):
            part = unique[start : start + PAGE]
            rows = self._query(
                f"id in [{', '.join(map(quoted, part))}]", ["id", "label", "metadata", raw_field(self.config)]
            )
            for row, vector in zip(rows, raw_vectors(rows, self.config), strict=True):
                found[row["id"]] = (_row(row), vector)
        return found

    def page(self, after_id: str, size: int, where: Filter, with_vectors: bool) -> list[tuple[Row, np.ndarray | None]]:
        def read(c: MilvusCollection) -> list[tuple[Row, np.ndarray | None]]:
            fields = ["id", "label", "metadata", *([raw_field(c.config)] if with_vectors else [])]
            rows = sorted(
                c._query(both(f"id > {quoted(after_id)}", expression(where)), fields, size), key=lambda r: r["id"]
            )
            vectors = raw_vectors(rows, c.config) if with_vectors else [None] * len(rows)
            return [(_row(row), vector) for row, vector in zip(rows, vectors, strict=True)]

        return self._current(read)

    def check_filter(self, where: Filter) -> None:
        """InvalidArgument for a metadata key that no item of the collection has (a typo, most likely). Read as
        searches are: a check for typos need not wait for the latest writes."""
        for name, _ in where.metadata:
            if name in self._known_keys:
                continue
            exists = f"exists metadata[{quoted(name)}]"
            if not self._current(lambda c: c._query(exists, ["id"], 1, c.consistency)):  # noqa: B023
                raise InvalidArgument(f"filter on metadata key {name!r}, which no item of collection {self.name!r} has")
            self._known_keys.add(name)

    def _nearest(self, queries: np.ndarray, k: int, ef_search: int, nprobe: int, where: Filter) -> list[list[Hit]]:
        """One Milvus search, on the collection's current table."""

        def nearest(c: MilvusCollection) -> list[list[Hit]]:
            return search(c.client, c.table, c.config, c.whitening, c.consistency, queries, k, ef_search, nprobe, where)

        return self._current(nearest)

    # --- writes ----------------------------------------------------------------------------------

    def add(self, items: list[Item], vectors: np.ndarray, thumbnails: Sequence[bytes] = ()) -> tuple[list[str], int]:
        """Upserts items with their prepared vectors. Returns the ids and the count afterwards, read Strong: so
        the write is acknowledged once Milvus serves it, and every later search sees it. Thumbnails go to the
        blobs table first (a reader never finds an item without the thumbnail it was added with)."""
        ids = [item_id or uuid.uuid4().hex for item_id, _, _ in items]
        for item_id, label, _ in items:
            if len(label.encode()) > MAX_LABEL_BYTES:
                raise InvalidArgument(f"item {item_id!r}: label is longer than {MAX_LABEL_BYTES} bytes")
        self.kept.put(ids, thumbnails)

        def add(c: MilvusCollection) -> int:
            c._upsert(ids, items, vectors)
            return c._count("")

        return ids, self._current(add, write=True)

    def thumbnails(self, item_ids: list[str]) -> dict[str, bytes]:
        return self.kept.get(item_ids)

    def _upsert(self, ids: list[str], items: list[Item], vectors: np.ndarray) -> None:
        indexed = to_index_space(vectors, self.whitening, self.config)
        rows = [
            {"id": item_id, "label": label, "metadata": metadata, "vector": vector.tolist()}
            for item_id, (_, label, metadata), vector in zip(ids, items, indexed, strict=True)
        ]
        if keeps_raw(self.config):
            for row, vector in zip(rows, vectors, strict=True):
                row["raw"] = to_text(vector)
        with milvus_errors(self.name):
            self.client.upsert(self.table, rows)

    def remove(self, item_ids: list[str]) -> tuple[int, list[str], int]:
        """Removes items by id; returns how many were removed, the ids that were not there and the count
        afterwards (read Strong, as for add)."""
        wanted = list(dict.fromkeys(item_ids))

        def remove(c: MilvusCollection) -> tuple[set[str], int]:
            present = {row["id"] for row in c._query(f"id in [{', '.join(map(quoted, wanted))}]", ["id"])}
            if present:
                with milvus_errors(c.name):
                    c.client.delete(c.table, ids=sorted(present))
                c.kept.forget(list(present))
            return present, c._count("")

        present, count = self._current(remove, write=True)
        return len(present), [i for i in wanted if i not in present], count

    def remove_where(self, where: Filter) -> tuple[int, int]:
        def remove(c: MilvusCollection) -> tuple[int, int]:
            selected = expression(where)
            removed = c._count(selected)
            if removed:
                gone = [row["id"] for page in c._pages(selected, []) for row in page] if c.kept.kept else []
                with milvus_errors(c.name):
                    c.client.delete(c.table, filter=selected)
                c.kept.forget(gone)
            return removed, c._count("")

        return self._current(remove, write=True)

    def augment(self, neighbours: int, alpha: float) -> int:
        raise FailedPrecondition(
            f"collection {self.name!r} is on Milvus: database-side augmentation runs on embedded collections; query "
            "expansion (Search's query_expansion) works on both"
        )

    def train_whitening(self, dim: int, sample: np.ndarray | None = None, source: str = "") -> None:
        """Learns PCA-whitening from the vectors as added (or from `sample`, the vectors of collection `source`) and
        moves every item to a new generation indexed in the whitened space; writes through any replica are refused
        (UNAVAILABLE) meanwhile, searches go on."""
        self._current(lambda c: c._train_whitening(dim, sample, source), write=True)

    def _train_whitening(self, dim: int, sample: np.ndarray | None, source: str) -> None:
        from offshelf.service.index.milvus import whitening as milvus_whitening  # it builds on this module

        milvus_whitening.train(self, dim, sample, source, self.fence_seconds)

    def _with(self, table: str, config: CollectionConfig | None = None) -> MilvusCollection:
        return MilvusCollection(
            self.client,
            self.blobs,
            config or self.config,
            table,
            self.whitening,
            self.consistency,
            self.reopen,
            self.fence_seconds,
        )


def _row(row: dict) -> Row:
    return Row(row["id"], 0, row["label"], row.get("metadata") or {})
