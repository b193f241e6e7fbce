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
import logging
import pathlib
import stat
import threading
from collections.abc import Sequence

from prometheus_client import Counter

from offshelf.service.api import secret_files
from offshelf.service.errors import PermissionDenied, StartupError, Unauthenticated
from offshelf.service.logs import fields

log = logging.getLogger(__name__)

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


def parse_hash(text: str) -> bytes | None:
    """A SHA-256 digest written as 64 hex digits, or None."""
    if len(text) != 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def lower(role: str, other: str) -> str:
    return min(role, other, key=ROLES.index)


Stamp = tuple[int, ...]  # what tells that the file changed: () when it is gone


class Tokens:
    """The tokens in force. A rewrite that cannot be read whole (a malformed line, a file other users can write) is
    refused, with an error line and offshelf_tokens_reload_errors_total: the last good set stays in force, but only
    for the tokens the new file's readable lines still name, at the lower of the two roles, so that a revocation or
    demotion an operator wrote never fails. A file gone or unreadable has no readable line: every token is revoked.
    """

    def __init__(self, path: pathlib.Path, reload_errors: Counter | None = None):
        self.path = path
        self.reload_errors = reload_errors
        self._lock = threading.Lock()
        stamp, readable, problem = self._read()
        if problem is not None:
            raise StartupError(problem)
        self._stamp: Stamp = stamp
        self._good = readable  # the last file read whole
        self._hashes = list(readable.items())

    def _stamp_now(self) -> Stamp:
        try:
            status = self.path.stat()
        except OSError:
            return ()
        return (status.st_ino, status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_mode)

    def _read(self) -> tuple[Stamp, dict[bytes, str], str | None]:
        """(stamp, {sha256: role} of the readable lines, why the file is refused or None)."""
        try:
            status = self.path.stat()
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            return (), {}, f"cannot read the tokens file {self.path} ({err}); check OFFSHELF_TOKENS_FILE"
        stamp = (status.st_ino, status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_mode)
        problem = secret_files.refusal(self.path, status, "OFFSHELF_TOKENS_FILE")
        if secret_files.others_can_read_mode(status.st_mode):
            log.warning(
                "others can read the tokens file",
                extra=fields(path=str(self.path), mode=oct(stat.S_IMODE(status.st_mode)), fix=f"chmod o-r {self.path}"),
            )
        readable: dict[bytes, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            fields_ = line.split()
            if not fields_ or fields_[0].startswith("#"):
                continue
            digest = parse_hash(fields_[1]) if len(fields_) >= 2 else None
            if fields_[0] not in ROLES or digest is None:
                problem = problem or (
                    f"{self.path} line {number}: expected '<role> <sha256 hex of the token>' with a role of "
                    f"{', '.join(ROLES)}"
                )
                continue
            readable[digest] = lower(readable[digest], fields_[0]) if digest in readable else fields_[0]
        return stamp, readable, problem

    def _reload(self) -> None:
        """Reads the file again when it changed (inode, times, size or mode)."""
        if self._stamp_now() == self._stamp:
            return
        with self._lock:
            stamp, readable, problem = self._read()
            if stamp == self._stamp:
                return  # another call reloaded it meanwhile
            self._stamp = stamp
            if problem is None:
                self._good, self._hashes = readable, list(readable.items())
                log.info("tokens file reloaded", extra=fields(path=str(self.path), tokens=len(readable)))
                return
            kept = {h: lower(role, readable[h]) for h, role in self._good.items() if h in readable}
            self._hashes = list(kept.items())
            if self.reload_errors is not None:
                self.reload_errors.inc()
            log.error(
                "tokens file refused",
                extra=fields(
                    path=str(self.path),
                    error=problem,
                    tokens_kept=len(kept),
                    tokens_revoked=len(self._good) - len(kept),
                    rule="the last good tokens stay, but only those the file still names, at the lower role",
                ),
            )

    def role_of(self, token: str) -> str | None:
        self._reload()
        presented = hashlib.sha256(token.encode()).digest()
        hashes = self._hashes
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
