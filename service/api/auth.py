"""Bearer tokens with roles, checked by the interceptor before any work.

The tokens file (OFFSHELF_TOKENS_FILE, e.g. a mounted Kubernetes Secret) holds one token per line as
``<role> <sha256 of the token, hex> [comment]``; ``#`` starts a comment line. It holds hashes, never the tokens,
and is read again when it changes (a rotated Secret takes effect without a restart). A presented token is hashed
and compared with every stored hash in constant time.

Roles are ordered: ``read`` < ``write`` < ``admin``; each RPC needs one (REQUIRED_ROLES). Health checks and
reflection stay open, for probes and tools. No token or an unknown one: UNAUTHENTICATED; a role too low:
PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import hmac
import pathlib
import threading
from collections.abc import Sequence

from offshelf.service.errors import PermissionDenied, StartupError, Unauthenticated

ROLES = ("read", "write", "admin")
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
READ, WRITE, ADMIN = ROLES
REQUIRED_ROLES = {
    "offshelf.v1.Embedding": {"Embed": READ, "ListModels": READ},
    "offshelf.v1.Index": {
        "ListCollections": READ,
        "GetCollection": READ,
        "GetItems": READ,
        "ListItems": READ,
        "Search": READ,
        "SearchBatch": READ,
        "Add": WRITE,
        "AddStream": WRITE,
        "Remove": WRITE,
        "CreateCollection": ADMIN,
        "DeleteCollection": ADMIN,
        "TrainWhitening": ADMIN,
        "AugmentDatabase": ADMIN,
    },
    "offshelf.v1.Heads": {
        "GetHead": READ,
        "ListHeads": READ,
        "Classify": READ,
        "TrainHead": ADMIN,
        "DeleteHead": ADMIN,
    },
    "inference.GRPCInferenceService": {
        "ServerLive": READ,
        "ServerReady": READ,
        "ModelReady": READ,
        "ServerMetadata": READ,
        "ModelMetadata": READ,
        "ModelInfer": READ,
        "ModelStreamInfer": READ,
        "ModelConfig": READ,
        "ModelStatistics": READ,
        "RepositoryIndex": READ,
        "RepositoryModelLoad": ADMIN,
        "RepositoryModelUnload": ADMIN,
    },
}


def required_role(method: str) -> str | None:
    """The role a full method name (/package.Service/Method) needs; None for the open services. A method not in
    the table needs admin: a new RPC is closed until it is given a role."""
    service, _, name = method.strip("/").partition("/")
    if service in OPEN_SERVICES:
        return None
    return REQUIRED_ROLES.get(service, {}).get(name, ADMIN)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, path: pathlib.Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._hashes: list[tuple[bytes, str]] = []
        self._read()

    def _read(self) -> None:
        """(Re)reads the file when its modification time or size changed; StartupError when it is unusable."""
        try:
            stat = self.path.stat()
        except OSError as err:
            raise StartupError(f"cannot read the tokens file {self.path} ({err}); check OFFSHELF_TOKENS_FILE") from err
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        hashes = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) < 2 or fields[0] not in ROLES or len(fields[1]) != 64:
                raise StartupError(
                    f"{self.path} line {number}: expected '<role> <sha256 hex of the token>' with a role of "
                    f"{', '.join(ROLES)}"
                )
            hashes.append((bytes.fromhex(fields[1]), fields[0]))
        with self._lock:
            self._hashes, self._stamp = hashes, stamp

    def role_of(self, token: str) -> str | None:
        try:
            self._read()
        except StartupError:
            pass  # a file replaced mid-write: the tokens read last stay in force
        presented = hashlib.sha256(token.encode()).digest()
        with self._lock:
            hashes = list(self._hashes)
        role = None
        for stored, stored_role in hashes:  # every one compared, in constant time
            if hmac.compare_digest(presented, stored):
                role = stored_role
        return role

    def check(self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> None:
        """Unauthenticated or PermissionDenied unless the call's bearer token has the role the method needs."""
        needed = required_role(method)
        if needed is None:
            return
        header = next((str(value) for key, value in metadata or () if key == "authorization"), "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("no bearer token: send the metadata 'authorization: Bearer <token>'")
        role = self.role_of(token.strip())
        if role is None:
            raise Unauthenticated("the bearer token is not known to this server")
        if ROLES.index(role) < ROLES.index(needed):
            raise PermissionDenied(f"{method.rsplit('/', 1)[-1]} needs the {needed} role; this token has {role}")
