"""A collection on Milvus: the distributed store, so that any number of stateless replicas share collections.

One Milvus collection per offshelf collection, named ``offshelf_collection_<sha256 of the name>`` (Milvus names
allow only letters, digits and '_'), with the fields id (the primary key), label, metadata (JSON) and vector, and the
collection's configuration (name, binding, index parameters) as its description. Milvus indexes the vectors with
FLAT, HNSW or IVF_PQ: the index types and parameters offshelf's own store uses.

Reads that must see every acknowledged write (item lookups, search by id, the lookups behind Remove and Add's
count) use Strong consistency; searches use the server's setting (Strong by default, see settings.py). IVF_PQ
candidates are re-ranked here by their exact scores (Milvus's IVF_PQ has no refine step): Milvus returns
refine_factor x k candidates with their stored vectors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator

import numpy as np
from google.protobuf import json_format
from pymilvus import DataType, MilvusClient, MilvusException

from offshelf.protos.v1 import index_pb2
from offshelf.service.drift import DriftMonitor
from offshelf.service.errors import FailedPrecondition, Internal, InvalidArgument, NotFound, Unavailable
from offshelf.service.index.store import Filter, Row
from offshelf.service.index.vectors import prepare

Item = tuple[str, str, dict[str, str]]  # (id, label, metadata)
Hit = tuple[str, float, str, dict[str, str]]  # (id, score, label, metadata)
PREFIX = "offshelf_collection_"
MAX_ID_BYTES, MAX_LABEL_BYTES = 256, 65535  # the id and label fields' VARCHAR lengths
PAGE = 4096  # items per query when reading many
COLLECTION_NOT_FOUND = 100  # Milvus's error code


def physical_name(name: str) -> str:
    return PREFIX + hashlib.sha256(name.encode()).hexdigest()[:40]


def quoted(text: str) -> str:
    """A string literal of Milvus's expression language (its escapes are JSON's)."""
    return json.dumps(text, ensure_ascii=False)


def expression(where: Filter) -> str:
    """The filter as a Milvus boolean expression ("" selects everything)."""
    clauses = ['label != ""'] if where.labelled else []
    if where.labels:
        clauses.append(f"label in [{', '.join(map(quoted, where.labels))}]")
    for key, values in where.metadata:
        clauses.append(f"metadata[{quoted(key)}] in [{', '.join(map(quoted, values))}]")
    return " and ".join(f"({c})" for c in clauses)


def both(*clauses: str) -> str:
    return " and ".join(f"({c})" for c in clauses if c)


@contextlib.contextmanager
def milvus_errors(name: str) -> Iterator[None]:
    """Milvus's errors as the service's: a missing collection is NOT_FOUND, an unreachable Milvus UNAVAILABLE."""
    try:
        yield
    except MilvusException as err:
        message = err.message or str(err)
        if err.code == COLLECTION_NOT_FOUND or "collection not found" in message or "can't find collection" in message:
            raise NotFound(f"no collection named {name!r}; ListCollections lists them") from err
        if "unavailable" in message.lower() or "deadline" in message.lower() or "connect" in message.lower():
            raise Unavailable(f"Milvus does not answer ({message}); retry, and check OFFSHELF_MILVUS_URI") from err
        raise Internal(f"Milvus refused the call on collection {name!r}: {message}") from err


def index_params(client: MilvusClient, config: index_pb2.Collection):
    metric = "L2" if config.metric == index_pb2.METRIC_L2 else "IP"
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


class MilvusCollection:
    """The same calls as the embedded Collection (collection.py), on a Milvus collection."""

    def __init__(self, client: MilvusClient, config: index_pb2.Collection, consistency: str):
        self.client = client
        self.config = config
        self.name = config.name
        self.dim = config.binding.dim
        self.table = physical_name(config.name)
        self.consistency = consistency
        self.drift = DriftMonitor()
        self.unsaved_writes = 0  # Milvus persists writes itself: no local index to save
        self.last_index_save_at: float | None = None

    @classmethod
    def create(cls, client: MilvusClient, config: index_pb2.Collection, consistency: str) -> MilvusCollection:
        schema = MilvusClient.create_schema(
            auto_id=False,
            enable_dynamic_field=False,
            description=json_format.MessageToJson(config, preserving_proto_field_name=True, indent=0),
        )
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("label", DataType.VARCHAR, max_length=MAX_LABEL_BYTES)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=config.binding.dim)
        collection = cls(client, config, consistency)
        with milvus_errors(config.name):
            client.create_collection(
                collection.table, schema=schema, index_params=index_params(client, config), consistency_level="Strong"
            )
        return collection

    @staticmethod
    def config_of(description: str) -> index_pb2.Collection:
        return json_format.Parse(description, index_pb2.Collection())

    def close(self) -> None:
        pass  # the client belongs to the registry

    def delete(self) -> None:
        with milvus_errors(self.name):
            self.client.drop_collection(self.table)

    # --- reads -----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count("")

    def _count(self, where: str) -> int:
        with milvus_errors(self.name):
            rows = self.client.query(self.table, filter=where, output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def mean(self) -> np.ndarray | None:
        return None  # the drift reference would need every vector read back from Milvus: not measured here

    def info(self) -> index_pb2.Collection:
        info = index_pb2.Collection()
        info.CopyFrom(self.config)
        info.count = self.count
        if self.config.index_type == "ivfpq":
            with milvus_errors(self.name):
                info.trained = int(self.client.describe_index(self.table, "vector").get("indexed_rows", 0)) > 0
        return info

    def _query(self, where: str, fields: list[str], limit: int | None = None) -> list[dict]:
        with milvus_errors(self.name):
            return list(
                self.client.query(
                    self.table, filter=where, output_fields=fields, limit=limit, consistency_level="Strong"
                )
            )

    def _all(self, where: str, fields: list[str]) -> Iterator[list[dict]]:
        """Every selected item, PAGE at a time in id order."""
        after = None
        while True:
            page = self._query(both(where, after and f"id > {quoted(after)}" or ""), ["id", *fields], PAGE)
            if not page:
                return
            yield page
            after = page[-1]["id"]

    def labelled_vectors(self) -> tuple[np.ndarray, list[str]]:
        rows = [row for page in self._all(expression(Filter(labelled=True)), ["label", "vector"]) for row in page]
        vectors = np.asarray([row["vector"] for row in rows], np.float32).reshape(len(rows), self.dim)
        return vectors, [row["label"] for row in rows]

    def vector_of(self, item_id: str) -> np.ndarray:
        found = self.get([item_id])
        if item_id not in found:
            raise NotFound(f"collection {self.name!r} has no item {item_id!r}")
        return found[item_id][1]

    def get(self, item_ids: list[str]) -> dict[str, tuple[Row, np.ndarray]]:
        found: dict[str, tuple[Row, np.ndarray]] = {}
        unique = list(dict.fromkeys(item_ids))
        for start in range(0, len(unique), PAGE):
            part = unique[start : start + PAGE]
            for row in self._query(f"id in [{', '.join(map(quoted, part))}]", ["id", "label", "metadata", "vector"]):
                found[row["id"]] = (_row(row), np.asarray(row["vector"], np.float32))
        return found

    def page(self, after_id: str, size: int, where: Filter, with_vectors: bool) -> list[tuple[Row, np.ndarray | None]]:
        fields = ["id", "label", "metadata", *(["vector"] if with_vectors else [])]
        rows = self._query(both(f"id > {quoted(after_id)}", expression(where)), fields, size)
        rows.sort(key=lambda row: row["id"])
        return [(_row(row), np.asarray(row["vector"], np.float32) if with_vectors else None) for row in rows]

    def check_filter(self, where: Filter) -> None:
        """InvalidArgument for a metadata key that no item of the collection has (a typo, most likely)."""
        for key, _ in where.metadata:
            if not self._query(f"exists metadata[{quoted(key)}]", ["id"], 1):
                raise InvalidArgument(f"filter on metadata key {key!r}, which no item of collection {self.name!r} has")

    def search(
        self,
        queries: np.ndarray,
        k: int,
        ef_search: int = 0,
        nprobe: int = 0,
        where: Filter | None = None,
        min_score: float | None = None,
    ) -> list[list[Hit]]:
        """The k nearest items to each query vector (one Milvus search), among those `where` selects."""
        queries = self.prepare(queries)
        self.drift.observe(queries)
        refine = self.config.ivfpq.refine_factor if self.config.index_type == "ivfpq" else 1
        params: dict[str, int] = {}
        if self.config.index_type == "hnsw":
            params["ef"] = max(ef_search or self.config.hnsw.ef_search, k)
        elif self.config.index_type == "ivfpq":
            params["nprobe"] = nprobe or self.config.ivfpq.nprobe
        with milvus_errors(self.name):
            results = self.client.search(
                self.table,
                data=queries.tolist(),
                limit=min(k * refine, 16384),
                filter=expression(where or Filter()),
                output_fields=["label", "metadata", *(["vector"] if refine > 1 else [])],
                search_params={"params": params},
                consistency_level=self.consistency,
            )
        answers = []
        for query, hits in zip(queries, results, strict=True):
            ranked = [(float(hit["distance"]), hit) for hit in hits]
            if refine > 1 and ranked:
                ranked = self._rerank(query, [hit for _, hit in ranked])
            ranked = ranked[:k]
            if min_score is not None:
                ranked = [(score, hit) for score, hit in ranked if score >= min_score]
            answers.append(
                [(hit["id"], score, hit["entity"]["label"], hit["entity"]["metadata"]) for score, hit in ranked]
            )
        return answers

    def _rerank(self, query: np.ndarray, hits: list[dict]) -> list[tuple[float, dict]]:
        """The candidates by exact score: inner product, or squared L2 distance (lower first)."""
        vectors = np.asarray([hit["entity"]["vector"] for hit in hits], np.float32)
        if self.config.metric == index_pb2.METRIC_L2:
            scores = ((vectors - query) ** 2).sum(axis=1)
            order = np.argsort(scores, kind="stable")
        else:
            scores = vectors @ query
            order = np.argsort(-scores, kind="stable")
        return [(float(scores[i]), hits[i]) for i in order]

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        return prepare(vectors, self.config)

    # --- writes ----------------------------------------------------------------------------------

    def add(self, items: list[Item], vectors: np.ndarray) -> list[str]:
        """Upserts items with their prepared vectors; acknowledged once Milvus has accepted the write."""
        ids = [item_id or uuid.uuid4().hex for item_id, _, _ in items]
        for item_id, label, _ in items:
            if len(label.encode()) > MAX_LABEL_BYTES:
                raise InvalidArgument(f"item {item_id!r}: label is longer than {MAX_LABEL_BYTES} bytes")
        rows = [
            {"id": item_id, "label": label, "metadata": metadata, "vector": vector.tolist()}
            for item_id, (_, label, metadata), vector in zip(ids, items, vectors, strict=True)
        ]
        with milvus_errors(self.name):
            self.client.upsert(self.table, rows)
        return ids

    def remove(self, item_ids: list[str]) -> tuple[int, list[str]]:
        wanted = list(dict.fromkeys(item_ids))
        present = {row["id"] for row in self._query(f"id in [{', '.join(map(quoted, wanted))}]", ["id"])}
        if present:
            with milvus_errors(self.name):
                self.client.delete(self.table, ids=sorted(present))
        return len(present), [i for i in wanted if i not in present]

    def remove_where(self, where: Filter) -> int:
        selected = expression(where)
        removed = self._count(selected)
        if removed:
            with milvus_errors(self.name):
                self.client.delete(self.table, filter=selected)
        return removed

    def train_whitening(self, dim: int) -> None:
        raise FailedPrecondition(
            f"collection {self.name!r} is on Milvus, where PCA-whitening is not built yet; "
            "whiten vectors before adding them, or use the embedded store"
        )


def _row(row: dict) -> Row:
    return Row(row["id"], 0, row["label"], row.get("metadata") or {})
