"""How the SDK connects: TLS or plaintext, a bearer token on every call, and gRPC's own retry policy
(exponential backoff, UNAVAILABLE only: the server answers that when it is overloaded, loading or draining,
and nothing else a retry could fix)."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import grpc

MAX_MESSAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class Connection:
    """address: host:port. tls: use TLS (with the system's roots unless ca_cert names a PEM file).
    client_cert/client_key: PEM files for mutual TLS. token: sent as ``authorization: Bearer <token>``.
    retries: further attempts after an UNAVAILABLE answer (0: none); backoff starts at initial_backoff
    seconds and doubles up to max_backoff, all within the call's deadline."""

    address: str
    tls: bool = False
    ca_cert: pathlib.Path | None = None
    client_cert: pathlib.Path | None = None
    client_key: pathlib.Path | None = None
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

        def read(path: pathlib.Path | None) -> bytes | None:
            return pathlib.Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca_cert), read(self.client_key), read(self.client_cert))

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
