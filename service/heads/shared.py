"""Heads shared by every replica on one Milvus: the version folders' files kept in a Milvus collection, and a lease
in the etcd of the Milvus deployment so that a head trains on one replica at a time.

Why Milvus: the replicas already reach it, it is durable and replicated, and it needs no volume (a ReadWriteMany
volume is what the scale overlay avoids) and no second store to run. Files are base64 chunks of CHUNK bytes in the
collection ``offshelf_head_files`` (primary key ``<head>/<version>/<file>#<chunk>``); a version's row
``.complete/<head>/<version>`` is written last, so a version is seen whole or not at all (Milvus 2.3 matches
prefixes only, hence the marker's own prefix). Milvus has no compare-and-set, etcd has: a lease is a
key created only if absent, bound to an etcd lease that expires when its holder stops renewing it.
"""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import threading
import urllib.error
import urllib.request
import uuid

from pymilvus import DataType, MilvusClient

from offshelf.service.errors import Unavailable
from offshelf.service.index.milvus import milvus_errors, quoted

log = logging.getLogger(__name__)
TABLE = "offshelf_head_files"
CHUNK = 48 << 10  # bytes per row: 64 KiB as base64, the most a VARCHAR holds
COMPLETE = ".complete"


class SharedHeads:
    def __init__(self, client: MilvusClient):
        self.client = client
        if not client.has_collection(TABLE):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=1024)
            schema.add_field("data", DataType.VARCHAR, max_length=65535)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field; unused
            params = client.prepare_index_params()
            params.add_index("vector", index_type="FLAT", metric_type="L2")
            client.create_collection(TABLE, schema=schema, index_params=params, consistency_level="Strong")

    def versions(self) -> dict[str, list[int]]:
        """Every head's complete versions, oldest first."""
        with milvus_errors(TABLE):
            rows = self.client.query(
                TABLE, filter=f'path like "{COMPLETE}/%"', output_fields=["path"], consistency_level="Strong"
            )
        found: dict[str, list[int]] = {}
        for row in rows:
            head, version = row["path"].removeprefix(f"{COMPLETE}/").rsplit("/", 1)
            found.setdefault(head, []).append(int(version))
        return {head: sorted(versions) for head, versions in found.items()}

    def upload(self, head: str, version: int, directory: pathlib.Path) -> None:
        rows = []
        for path in sorted(p for p in directory.iterdir() if p.is_file()):
            data = path.read_bytes()
            for number, start in enumerate(range(0, max(len(data), 1), CHUNK)):
                rows.append(self._row(f"{head}/{version}/{path.name}#{number}", data[start : start + CHUNK]))
        with milvus_errors(TABLE):
            for start in range(0, len(rows), 64):
                self.client.upsert(TABLE, rows[start : start + 64])
            self.client.upsert(TABLE, [self._row(f"{COMPLETE}/{head}/{version}", b"")])

    def download(self, head: str, version: int, directory: pathlib.Path) -> None:
        """Writes the version's files into `directory` (which must exist)."""
        with milvus_errors(TABLE):
            rows = self.client.query(
                TABLE,
                filter=f"path like {quoted(f'{head}/{version}/%')}",
                output_fields=["path", "data"],
                consistency_level="Strong",
            )
        chunks: dict[str, dict[int, bytes]] = {}
        for row in rows:
            name, number = row["path"].rsplit("/", 1)[1].rsplit("#", 1)
            chunks.setdefault(name, {})[int(number)] = base64.b64decode(row["data"])
        for name, parts in chunks.items():
            (directory / name).write_bytes(b"".join(parts[i] for i in sorted(parts)))

    def delete(self, head: str) -> None:
        """Removes the markers first: a half-deleted head is no longer seen."""
        with milvus_errors(TABLE):
            self.client.delete(TABLE, filter=f"path like {quoted(f'{COMPLETE}/{head}/%')}")
            self.client.delete(TABLE, filter=f"path like {quoted(f'{head}/%')}")

    @staticmethod
    def _row(path: str, data: bytes) -> dict:
        return {"path": path, "data": base64.b64encode(data).decode(), "vector": [0.0, 0.0]}


class Lease:
    """A held key in etcd; renewed in the background until released (or the process dies and it expires)."""

    def __init__(self, etcd: EtcdLeases, key: str, lease_id: str):
        self.etcd, self.key, self.lease_id = etcd, key, lease_id
        self._released = threading.Event()
        threading.Thread(target=self._renew, name=f"lease-{key}", daemon=True).start()

    def _renew(self) -> None:
        while not self._released.wait(self.etcd.ttl / 3):
            try:
                self.etcd.call("/v3/lease/keepalive", {"ID": self.lease_id})
            except Unavailable:
                log.warning("renewing a lease failed; retrying", extra={"key": self.key})

    def release(self) -> None:
        self._released.set()
        try:
            self.etcd.call("/v3/lease/revoke", {"ID": self.lease_id})
        except Unavailable:
            pass  # it expires by itself


class EtcdLeases:
    """Leases through etcd's JSON gateway (its v3 API over HTTP): no client library to pin beside grpcio."""

    def __init__(self, uri: str, ttl: int = 15):
        self.uri = uri.rstrip("/")
        self.ttl = ttl
        self.owner = uuid.uuid4().hex

    def call(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.uri + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise Unavailable(f"etcd at {self.uri} does not answer ({err}); check OFFSHELF_MILVUS_ETCD_URI") from err

    def acquire(self, key: str, holder: str) -> Lease | None:
        """The lease on `key`, or None when another holder has it."""
        lease_id = self.call("/v3/lease/grant", {"TTL": self.ttl})["ID"]
        encoded = base64.b64encode(f"offshelf/{key}".encode()).decode()
        answer = self.call(
            "/v3/kv/txn",
            {
                "compare": [{"key": encoded, "target": "CREATE", "create_revision": "0"}],
                "success": [
                    {
                        "request_put": {
                            "key": encoded,
                            "value": base64.b64encode(holder.encode()).decode(),
                            "lease": lease_id,
                        }
                    }
                ],
            },
        )
        if answer.get("succeeded"):
            return Lease(self, key, lease_id)
        self.call("/v3/lease/revoke", {"ID": lease_id})
        return None
