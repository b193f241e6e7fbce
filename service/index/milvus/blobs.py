"""Files kept in Milvus: trained heads, collections' whitening and thumbnails, seen by every replica.

One Milvus collection, ``offshelf_blobs``, holds each file as base64 chunks of CHUNK bytes (about the most a
VARCHAR holds) under the primary key ``<name>#<chunk>``; names are paths such as ``heads/cats/3/head.onnx``.
Milvus 2.3 matches string prefixes only, so names are listed by prefix. A vector field is required by Milvus 2.3 in
every collection: a 2-d zero vector no one searches.
"""

from __future__ import annotations

import base64

from pymilvus import DataType, MilvusClient

from offshelf.service.index.milvus.calls import milvus_errors, quoted

TABLE = "offshelf_blobs"
CHUNK = 48000  # bytes: 64,000 characters as base64


class Blobs:
    def __init__(self, client: MilvusClient):
        self.client = client
        with milvus_errors(TABLE):
            if not client.has_collection(TABLE):
                schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=1024)
                schema.add_field("data", DataType.VARCHAR, max_length=65535)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
                params = client.prepare_index_params()
                params.add_index("vector", index_type="FLAT", metric_type="L2")
                client.create_collection(TABLE, schema=schema, index_params=params, consistency_level="Strong")

    def put(self, name: str, data: bytes) -> None:
        """Writes the file whole: the new chunks over the old ones, then the old ones beyond them are deleted (a
        reader never finds the file missing, as a fence renewed by another replica must not be)."""
        paths = [f"{name}#{n}" for n in range(max(len(data) - 1, 0) // CHUNK + 1)]
        rows = [
            {"path": path, "data": base64.b64encode(data[n * CHUNK : (n + 1) * CHUNK]).decode(), "vector": [0.0, 0.0]}
            for n, path in enumerate(paths)
        ]
        with milvus_errors(TABLE):
            for start in range(0, len(rows), 64):
                self.client.upsert(TABLE, rows[start : start + 64])
            kept = ", ".join(quoted(path) for path in paths)
            self.client.delete(TABLE, filter=f"path like {quoted(name + '#%')} and path not in [{kept}]")

    def get(self, name: str) -> bytes | None:
        chunks = self._rows(name + "#", ["path", "data"])
        if not chunks:
            return None
        parts = {int(row["path"].rsplit("#", 1)[1]): base64.b64decode(row["data"]) for row in chunks}
        return b"".join(parts[n] for n in sorted(parts))

    def put_small(self, files: dict[str, bytes]) -> None:
        """Files of at most CHUNK bytes each (thumbnails), in one upsert per 64."""
        if not files:
            return
        rows = [
            {"path": f"{name}#0", "data": base64.b64encode(data).decode(), "vector": [0.0, 0.0]}
            for name, data in files.items()
        ]
        with milvus_errors(TABLE):
            for start in range(0, len(rows), 64):
                self.client.upsert(TABLE, rows[start : start + 64])

    def get_small(self, names: list[str]) -> dict[str, bytes]:
        """The files of these names that exist (written by put_small)."""
        found: dict[str, bytes] = {}
        with milvus_errors(TABLE):
            for start in range(0, len(names), 500):
                paths = ", ".join(quoted(f"{name}#0") for name in names[start : start + 500])
                rows = self.client.query(
                    TABLE, filter=f"path in [{paths}]", output_fields=["path", "data"], consistency_level="Strong"
                )
                found.update({row["path"][:-2]: base64.b64decode(row["data"]) for row in rows})
        return found

    def delete_small(self, names: list[str]) -> None:
        if not names:
            return
        with milvus_errors(TABLE):
            for start in range(0, len(names), 500):
                self.client.delete(TABLE, ids=[f"{name}#0" for name in names[start : start + 500]])

    def names(self, prefix: str) -> list[str]:
        return sorted({row["path"].rsplit("#", 1)[0] for row in self._rows(prefix, ["path"])})

    def delete(self, prefix: str) -> None:
        with milvus_errors(TABLE):
            self.client.delete(TABLE, filter=f"path like {quoted(prefix + '%')}")

    def _rows(self, prefix: str, fields: list[str]) -> list[dict]:
        with milvus_errors(TABLE):
            return list(
                self.client.query(
                    TABLE, filter=f"path like {quoted(prefix + '%')}", output_fields=fields, consistency_level="Strong"
                )
            )
