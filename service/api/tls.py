"""TLS on the gRPC port from PEM files, reloaded when they change (cert-manager rotates a Secret's files in place).

gRPC asks for the certificate configuration at every new handshake; the files are read again only when their
modification times change. Connections already open keep the certificate they started with. With a client CA,
every client must present a certificate it signed (mutual TLS).
"""

from __future__ import annotations

import logging
import pathlib

import grpc

from offshelf.service.errors import StartupError
from offshelf.service.logs import fields

log = logging.getLogger(__name__)


class CertificateFiles:
    def __init__(self, cert: pathlib.Path, key: pathlib.Path, client_ca: pathlib.Path | None):
        self.paths = [p for p in (cert, key, client_ca) if p is not None]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamp = self._stamps()

    def _stamps(self) -> tuple[int, ...]:
        try:
            return tuple(p.stat().st_mtime_ns for p in self.paths)
        except OSError as err:
            raise StartupError(f"cannot read a TLS file ({err}); check OFFSHELF_TLS_CERT, _KEY and _CLIENT_CA") from err

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
            if stamp == self._stamp:
                return None
            configuration = self.configuration()
        except StartupError as err:  # a file replaced mid-write: the next handshake tries again
            log.warning("TLS files not reloaded", extra=fields(error=str(err)))
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded", extra=fields(cert=str(self.cert)))
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
