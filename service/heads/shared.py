"""Heads shared by every replica on one Milvus: the version folders' files kept in Milvus (milvus/blobs.py), and a
lease in the etcd of the Milvus deployment so that a head trains on one replica at a time.

Why Milvus: the replicas already reach it, it is durable and replicated, and it needs no volume (a ReadWriteMany
volume is what the scale overlay avoids) and no second store to run. A version's files are written first, then its
marker ``heads-complete/<head>/<version>``: a version is seen whole or not at all. Milvus has no compare-and-set,
etcd has: a lease is a key created only if absent, bound to an etcd lease that expires when its holder stops
renewing it.
"""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
import uuid

from offshelf.service.errors import Unavailable
from offshelf.service.index.milvus.blobs import Blobs

log = logging.getLogger(__name__)
FILES, COMPLETE = "heads", "heads-complete"


class SharedHeads:
    def __init__(self, blobs: Blobs):
        self.blobs = blobs

    def versions(self) -> dict[str, list[int]]:
        """Every head's complete versions, oldest first."""
        found: dict[str, list[int]] = {}
        for name in self.blobs.names(f"{COMPLETE}/"):
            head, version = name.removeprefix(f"{COMPLETE}/").rsplit("/", 1)
            found.setdefault(head, []).append(int(version))
        return {head: sorted(versions) for head, versions in found.items()}

    def upload(self, head: str, version: int, directory: pathlib.Path) -> None:
        for path in sorted(p for p in directory.iterdir() if p.is_file()):
            self.blobs.put(f"{FILES}/{head}/{version}/{path.name}", path.read_bytes())
        self.blobs.put(f"{COMPLETE}/{head}/{version}", b"")

    def download(self, head: str, version: int, directory: pathlib.Path) -> None:
        """Writes the version's files into `directory` (which must exist)."""
        prefix = f"{FILES}/{head}/{version}/"
        for name in self.blobs.names(prefix):
            data = self.blobs.get(name)
            if data is not None:
                (directory / name.removeprefix(prefix)).write_bytes(data)

    def download_missing(self, root: pathlib.Path, stored: dict[str, list[int]]) -> list[str]:
        """Downloads into `root` the newest stored version of each head it lacks (each folder whole: staged, then
        renamed); returns those heads."""
        fresh = []
        for name, versions in stored.items():
            target = root / name / str(versions[-1])
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=".incoming-"))
            try:
                self.download(name, versions[-1], staged)
                staged.chmod(0o755)
                staged.rename(target)
            finally:
                shutil.rmtree(staged, ignore_errors=True)
            fresh.append(name)
        return fresh

    def delete(self, head: str) -> None:
        """Removes the markers first: a half-deleted head is no longer seen."""
        self.blobs.delete(f"{COMPLETE}/{head}/")
        self.blobs.delete(f"{FILES}/{head}/")


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
