"""How the SDK connects: TLS or plaintext, a bearer token on every call, and gRPC's own retry policy
(exponential backoff, UNAVAILABLE only: the server answers that when it is overloaded, loading or draining,
and nothing else a retry could fix)."""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
from dataclasses import dataclass

import grpc

from offshelf.clients.errors import OffshelfError

MAX_MESSAGE_BYTES = 64 << 20
# How gRPC reports a connection the server closed at once: what a plaintext client meets on a TLS port.
CLOSED_AT_ONCE = ("Socket closed", "Connection reset", "failed to connect")
PEM = pathlib.Path | str | bytes  # a file, or the PEM text itself


@dataclass(frozen=True)
class Connection:
    """address: host:port. tls: use TLS (with the system's roots unless ca_cert is given). ca_cert, client_cert,
    client_key (mutual TLS): PEM files (a path), or the PEM text itself (bytes). token: sent as
    ``authorization: Bearer <token>``.
    retries: further attempts after an UNAVAILABLE answer (0: none); backoff starts at initial_backoff
    seconds and doubles up to max_backoff, all within the call's deadline."""

    address: str
    tls: bool = False
    ca_cert: PEM | None = None
    client_cert: PEM | None = None
    client_key: PEM | None = None
    token: str | None = None
    retries: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0

    def options(self) -> list[tuple[str, object]]:
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", int(self.retries > 0)),
            # Spreads calls over every address a name resolves to (a headless Service's pods).
            ("grpc.lb_policy_name", "round_robin"),
        ]
        if self.retries > 0:
            policy = {
                "maxAttempts": min(self.retries + 1, 5),  # gRPC caps attempts at 5
                "initialBackoff": f"{self.initial_backoff}s",
                "maxBackoff": f"{self.max_backoff}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
            config = {"methodConfig": [{"name": [{}], "retryPolicy": policy}]}
            options.append(("grpc.service_config", json.dumps(config)))
        return options

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not (self.tls or self.ca_cert or self.client_cert):
            return None
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("mutual TLS needs both client_cert and client_key")

        return grpc.ssl_channel_credentials(pem(self.ca_cert), pem(self.client_key), pem(self.client_cert))

    def plaintext(self) -> bool:
        return not (self.tls or self.ca_cert or self.client_cert)

    def explained(self, error: OffshelfError) -> OffshelfError:
        """The error, or for a plaintext client whose connection the server closed at once, the same error saying
        so when the server speaks TLS (gRPC's own message is only "Socket closed")."""
        closed = error.status == grpc.StatusCode.UNAVAILABLE and any(s in error.message for s in CLOSED_AT_ONCE)
        if not (closed and self.plaintext() and speaks_tls(self.address)):
            return error
        hint = (
            f"the server at {self.address} speaks TLS: add --tls / ca_cert (the CLI's --tls or --ca-cert FILE; "
            f"Client(..., tls=True) or ca_cert=...); gRPC said: {error.message}"
        )
        error.message, error.args = hint, (hint,)
        return error

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self) -> grpc.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(self.address, options=self.options())
        return grpc.secure_channel(self.address, credentials, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.address, options=self.options())
        return grpc.aio.secure_channel(self.address, credentials, options=self.options())


def pem(source: PEM | None) -> bytes | None:
    """PEM text: bytes as they are, a path read."""
    if source is None or isinstance(source, bytes):
        return source
    return pathlib.Path(source).read_bytes()


def speaks_tls(address: str, timeout: float = 3.0) -> bool:
    """Whether a TLS handshake with host:port succeeds (its certificate unchecked: only the protocol is asked)."""
    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout) as raw, context.wrap_socket(raw):
            return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False
