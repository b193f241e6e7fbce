"""TLS and mutual TLS on the gRPC port (issue 14, section 1) and the HTTP door, with certificates made by openssl:
plaintext is refused, a rotated certificate serves new connections without a restart, mTLS refuses clients without
one."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_startup import serve, the_error

from offshelf.clients import Client
from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

from common import ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def authority(folder: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    openssl(
        *"req -x509 -newkey rsa:2048 -nodes -days 2".split(),
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return cert, key


def signed(folder: pathlib.Path, name: str, ca: tuple[pathlib.Path, pathlib.Path]) -> tuple[pathlib.Path, pathlib.Path]:
    """A certificate for 127.0.0.1 and localhost signed by the CA: (certificate, key)."""
    cert, key, request = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    extensions = folder / f"{name}.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(request))
    openssl(
        *("x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial"),
        *("-days", "2", "-extfile", str(extensions), "-out", str(cert)),
    )
    return cert, key


def serving(server: ServerProcess, **connection) -> str:
    with Client(server.address, timeout=10, retries=0, **connection) as client:
        return client.health()


def refused(server: ServerProcess, **connection) -> bool:
    """Whether the TLS handshake fails (the call answers UNAVAILABLE without reaching the server)."""
    with pytest.raises(grpc.RpcError) as caught:
        serving(server, **connection)
    return caught.value.code() == grpc.StatusCode.UNAVAILABLE


def plaintext_health_port_answers_health_only(server: ServerProcess) -> bool:
    """Kubernetes' gRPC probes speak neither TLS nor tokens: they ask --health-port, which serves health alone."""
    port = next(e for e in server.logs if e.get("message") == "listening")["health_port"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            embedding_pb2_grpc.EmbeddingStub(channel).Embed(embedding_pb2.EmbedRequest(model="any"), timeout=10)
    return (
        reply.status == health_pb2.HealthCheckResponse.SERVING and caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    )


def http_ready(url: str, **tls) -> bool:
    return requests.get(url + "/v2/health/ready", timeout=10, **tls).status_code == 200


def test_tls_refuses_plaintext_and_serves_a_rotated_certificate_to_new_connections(tiny_repo, tmp_path):
    first_ca, second_ca = authority(tmp_path, "first-ca"), authority(tmp_path, "second-ca")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    for source, target in zip(signed(tmp_path, "server-1", first_ca), (cert, key), strict=True):
        shutil.copy(source, target)
    server = ServerProcess(
        tiny_repo,
        tmp_path / "data",
        tls_cert=cert,
        tls_key=key,
        health_port=0,
        http_port=0,
        drain_seconds=0,
        client={"ca_cert": first_ca[0]},
    )
    try:
        server.wait_serving()
        assert serving(server, ca_cert=first_ca[0]) == "SERVING"
        assert refused(server)  # plaintext
        assert plaintext_health_port_answers_health_only(server)
        https = server.http_url.replace("http://", "https://")
        assert http_ready(https, verify=str(first_ca[0]))  # the HTTP door speaks TLS with the same files
        with pytest.raises(requests.ConnectionError):
            requests.get(server.http_url + "/v2/health/ready", timeout=10)  # plaintext
        for source, target in zip(signed(tmp_path, "server-2", second_ca), (cert, key), strict=True):
            shutil.copy(source, target)  # as cert-manager rotates a Secret
        assert serving(server, ca_cert=second_ca[0]) == "SERVING"
        assert refused(server, ca_cert=first_ca[0])  # the old chain is no longer presented
        assert http_ready(https, verify=str(second_ca[0]))
        with pytest.raises(requests.exceptions.SSLError):
            http_ready(https, verify=str(first_ca[0]))
    finally:
        server.kill()


def test_mutual_tls_refuses_clients_without_a_certificate_the_client_ca_signed(tiny_repo, tmp_path):
    ca = authority(tmp_path, "ca")
    other_ca = authority(tmp_path, "other-ca")
    cert, key = signed(tmp_path, "server", ca)
    client_cert, client_key = signed(tmp_path, "client", ca)
    stranger_cert, stranger_key = signed(tmp_path, "stranger", other_ca)
    mutual = {"ca_cert": ca[0], "client_cert": client_cert, "client_key": client_key}
    server = ServerProcess(
        tiny_repo,
        tmp_path / "data",
        tls_cert=cert,
        tls_key=key,
        tls_client_ca=ca[0],
        drain_seconds=0,
        http_port=0,
        client=mutual,
    )
    try:
        server.wait_serving()
        assert serving(server, **mutual) == "SERVING"
        assert refused(server, ca_cert=ca[0])  # no client certificate
        assert refused(server, ca_cert=ca[0], client_cert=stranger_cert, client_key=stranger_key)
        https = server.http_url.replace("http://", "https://")
        assert http_ready(https, verify=str(ca[0]), cert=(str(client_cert), str(client_key)))
        for stranger in (None, (str(stranger_cert), str(stranger_key))):
            with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
                http_ready(https, verify=str(ca[0]), cert=stranger)
    finally:
        server.kill()


def test_a_tls_key_that_others_can_write_is_refused_and_one_they_can_read_is_warned_of(tiny_repo, tmp_path):
    cert, key = signed(tmp_path, "server", authority(tmp_path, "ca"))
    key.chmod(0o646)
    error = the_error(serve(tiny_repo, tmp_path / "data", tls_cert=str(cert), tls_key=str(key)))
    assert str(key) in error and "0o646" in error and f"chmod o-w {key}" in error
    key.chmod(0o644)
    server = ServerProcess(tiny_repo, tmp_path / "data", tls_cert=cert, tls_key=key, drain_seconds=0)
    try:
        warning = next(e for e in server.logs if e.get("message") == "others can read the TLS key")
        assert warning["level"] == "warning" and warning["fix"] == f"chmod o-r {key}"
    finally:
        server.kill()


def test_a_plaintext_client_on_the_tls_port_is_told_to_add_tls_and_the_server_logs_no_handshake_line(
    tiny_repo, tmp_path
):
    ca = authority(tmp_path, "ca")
    cert, key = signed(tmp_path, "server", ca)
    server = ServerProcess(
        tiny_repo, tmp_path / "data", tls_cert=cert, tls_key=key, drain_seconds=0, client={"ca_cert": ca[0]}
    )
    try:
        server.wait_serving()
        assert serving(server, ca_cert=ca[0].read_bytes()) == "SERVING"  # PEM bytes, as well as a path
        with pytest.raises(grpc.RpcError) as caught:
            serving(server)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "speaks TLS: add --tls / ca_cert" in caught.value.details()
        cli = subprocess.run(
            [sys.executable, "-m", "offshelf.clients.cli", "models", "--server", server.address, "--retries", "0"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode != 0 and "speaks TLS: add --tls / ca_cert" in cli.stderr, cli.stderr
        with Client(server.address, timeout=10, retries=0, ca_cert=ca[0]) as client:
            client.health()  # a call after the refused handshakes: their log lines, if any, are written by now
        assert [line for line in server.stray if "Handshake failed" in line] == []
    finally:
        server.kill()
