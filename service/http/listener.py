"""The HTTP door's server: uvicorn on its own event loop thread, on a socket bound before it starts (so that a
taken port is a start-up error and port 0 is known at once), with the gRPC port's TLS files, reloaded when they
change (each new handshake checks; connections already open keep their certificate)."""

from __future__ import annotations

import logging
import math
import pathlib
import socket
import ssl
import threading
import time
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from offshelf.service.api.tls import CertificateFiles
from offshelf.service.errors import StartupError

log = logging.getLogger(__name__)
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start and stop lines repeat offshelf's own
START_SECONDS = 30


def reloading_context(files: CertificateFiles) -> ssl.SSLContext:
    """A TLS context whose handshakes switch to a context of the new files once they change."""

    def context() -> ssl.SSLContext:
        made = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        made.load_cert_chain(files.cert, files.key)
        if files.client_ca is not None:
            made.verify_mode = ssl.CERT_REQUIRED
            made.load_verify_locations(files.client_ca)
        return made

    current = [context()]

    def on_handshake(connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if files.fetch() is not None:  # a file changed since the last handshake, and reads whole
            try:
                fresh = context()
            except (OSError, ssl.SSLError) as err:
                log.error("TLS files not reloaded on the HTTP port", extra={"error": str(err)})
            else:
                fresh.sni_callback = on_handshake
                current[0] = fresh
        connection.context = current[0]

    current[0].sni_callback = on_handshake
    return current[0]


class HttpListener:
    def __init__(
        self,
        app: Starlette,
        host: str,
        port: int,
        tls: tuple[pathlib.Path, pathlib.Path, pathlib.Path | None] | None,
        grace_seconds: float,
    ):
        factory: Callable[..., ssl.SSLContext] | None = None
        if tls is not None:
            context = reloading_context(CertificateFiles(*tls))
            factory = lambda *_: context  # noqa: E731
        self.config = uvicorn.Config(
            app,
            log_config=None,  # its lines go to offshelf's JSON log
            access_log=False,  # the door writes its own access line
            lifespan="off",
            http="h11",  # the same parser wherever it runs (uvicorn picks httptools when it happens to be installed)
            loop="asyncio",
            server_header=False,
            timeout_graceful_shutdown=math.ceil(grace_seconds),
            ssl_context_factory=factory,
        )
        self.server = uvicorn.Server(self.config)
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it a response
        # written in two parts (headers, body) waits for the client's delayed ACK, 40 ms a call
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart within TIME_WAIT
        try:
            self.socket.bind((host, port))
        except OSError as err:
            self.socket.close()
            raise StartupError(f"cannot serve HTTP on {host}:{port} ({err}); pick a free --http-port") from err
        self.port = self.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    def _run(self) -> None:
        self.server.run(sockets=[self.socket])

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise StartupError("the HTTP door did not start; see the log above")

    def stop_taking_calls(self) -> None:
        """Closes the port; calls in progress go on (until grace_seconds)."""
        self.server.should_exit = True

    def join(self) -> None:
        self._thread.join(self.config.timeout_graceful_shutdown or None)
        self.socket.close()
