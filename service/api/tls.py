"""TLS on the gRPC port from PEM files, reloaded when they change (cert-manager rotates a Secret's files in place).

gRPC asks for the certificate configuration at every new handshake; the files are read again only when their
modification times change. Connections already open keep the certificate they started with. With a client CA,
every client must present a certificate it signed (mutual TLS).
"""

from __future__ import annotations

import logging
import pathlib
import stat

import grpc

from offshelf.service.api import secret_files
from offshelf.service.errors import StartupError
from offshelf.service.logs import fields

log = logging.getLogger(__name__)


class CertificateFiles:
    def __init__(self, cert: pathlib.Path, key: pathlib.Path, client_ca: pathlib.Path | None):
        self.paths = [p for p in (cert, key, client_ca) if p is not None]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamp = self._stamps()
        self._refused: str | None = None  # why the files were last not reloaded
        self._warn_if_others_can_read_the_key()

    def _stamps(self) -> tuple[int, ...]:
        """The files' modification times; StartupError when one is unreadable or others can write it (anyone on
        the host could then swap the key, or make the client CA trust their own certificates)."""
        try:
            statuses = [p.stat() for p in self.paths]
        except OSError as err:
            raise StartupError(f"cannot read a TLS file ({err}); check OFFSHELF_TLS_CERT, _KEY and _CLIENT_CA") from err
        for path, status in zip(self.paths, statuses, strict=True):
            refused = secret_files.refusal(path, status, "OFFSHELF_TLS_CERT, _KEY and _CLIENT_CA")
            if refused is not None:
                raise StartupError(refused)
        return tuple(s.st_mtime_ns for s in statuses) + tuple(s.st_mode for s in statuses)

    def _warn_if_others_can_read_the_key(self) -> None:
        mode = self._stamp[len(self.paths) + 1]  # the key's
        if secret_files.others_can_read_mode(mode):
            log.warning(
                "others can read the TLS key",
                extra=fields(path=str(self.key), mode=oct(stat.S_IMODE(mode)), fix=f"chmod o-r {self.key}"),
            )

    def configuration(self):
        """The files as gRPC's certificate configuration."""
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            ca = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as err:
            raise StartupError(f"cannot read a TLS file ({err}); check OFFSHELF_TLS_CERT, _KEY and _CLIENT_CA") from err
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def fetch(self):
        """A new configuration when a file changed since the last read, else None (gRPC keeps the current one)."""
        try:
            stamp = self._stamps()
            self._refused = None
            if stamp == self._stamp:
                return None
            configuration = self.configuration()
        except StartupError as err:  # a file replaced mid-write, or one others can write: the current one stays
            if str(err) != self._refused:  # once, not at every handshake
                log.error("TLS files not reloaded", extra=fields(error=str(err)))
                self._refused = str(err)
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded", extra=fields(cert=str(self.cert)))
        self._warn_if_others_can_read_the_key()
        return configuration


def server_credentials(
    cert: pathlib.Path | None, key: pathlib.Path | None, client_ca: pathlib.Path | None
) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port, or None for plaintext (no certificate given)."""
    if cert is None and key is None:
        if client_ca is not None:
            raise StartupError("OFFSHELF_TLS_CLIENT_CA needs OFFSHELF_TLS_CERT and OFFSHELF_TLS_KEY too")
        return None
    if cert is None or key is None:
        raise StartupError("TLS needs both OFFSHELF_TLS_CERT and OFFSHELF_TLS_KEY")
    files = CertificateFiles(cert, key, client_ca)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(), files.fetch, require_client_authentication=client_ca is not None
    )
