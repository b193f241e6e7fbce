"""Bearer tokens with roles (issue 14, section 1): every RPC of every service x {no token, a wrong one, read, write,
admin}, on a real server with a tokens file; zero calls get past a role they lack."""

from __future__ import annotations

import hashlib
import time

import grpc
import pytest
import requests
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_startup import serve, the_error

from offshelf.protos.inference import grpc_predict_v2_pb2
from offshelf.protos.v1 import embedding_pb2, heads_pb2, index_pb2
from offshelf.service.api.auth import READ, REQUIRED_ROLES, ROLES

from common import ServerProcess

TOKENS = {"read": "r3ad-t0ken", "write": "wr1te-t0ken", "admin": "adm1n-t0ken"}
DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def tokens_file(path, tokens: dict[str, str]):
    lines = ["# role  sha256 of the token"]
    lines += [f"{role} {hashlib.sha256(token.encode()).hexdigest()}  {role} client" for role, token in tokens.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def secured(tiny_repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("secured")
    path = tokens_file(folder / "tokens", TOKENS)
    server = ServerProcess(tiny_repo, folder / "data", tokens_file=path, drain_seconds=0, health_port=0, http_port=0)
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            yield server, channel, path
    finally:
        server.kill()


def every_method():
    """(full method name, request class, client streaming, server streaming) of every RPC offshelf serves."""
    for module in (embedding_pb2, index_pb2, heads_pb2, grpc_predict_v2_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                request = message_factory.GetMessageClass(method.input_type)
                yield (
                    f"/{service.full_name}/{method.name}",
                    request,
                    method.client_streaming,
                    method.server_streaming,
                )


def call(channel, method: str, request_class, client_streaming: bool, server_streaming: bool, token: str | None):
    """The status code of the method called with an empty request and the token."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    kinds = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
        (False, True): channel.unary_stream,
    }
    stub = kinds[client_streaming, server_streaming](
        method, request_serializer=request_class.SerializeToString, response_deserializer=lambda b: b
    )
    request = iter([request_class()]) if client_streaming else request_class()
    try:
        answer = stub(request, timeout=30, metadata=metadata)
        if server_streaming:
            list(answer)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def test_every_rpc_needs_a_token_of_its_role(secured):
    _, channel, _ = secured
    methods = list(every_method())
    assert len(methods) == sum(len(m) for m in REQUIRED_ROLES.values())  # every RPC has a role in the table
    unauthorised_successes = []
    for method, request, client_streaming, server_streaming in methods:
        service, name = method.strip("/").split("/")
        needed = REQUIRED_ROLES[service][name]
        for who, token in [("none", None), ("wrong", "not-a-token"), *TOKENS.items()]:
            code = call(channel, method, request, client_streaming, server_streaming, token)
            if who in ("none", "wrong"):
                expected_denial = grpc.StatusCode.UNAUTHENTICATED
            elif ROLES.index(who) < ROLES.index(needed):
                expected_denial = grpc.StatusCode.PERMISSION_DENIED
            else:
                expected_denial = None
            if expected_denial is None:
                assert code not in DENIED, (method, who, code)
            elif code != expected_denial:
                unauthorised_successes.append((method, who, code))
    assert unauthorised_successes == []


def test_every_http_route_needs_a_token_of_its_rpcs_role(secured):
    """The HTTP door's routes (as /openapi.json lists them) x {no token, a wrong one, read, write, admin}: each
    route needs the role of the RPC it stands for; health, the page and the document stay open."""
    server, _, _ = secured
    document = requests.get(f"{server.http_url}/openapi.json", timeout=30).json()
    wrong = []
    for path, operations in document["paths"].items():
        concrete = path.replace("{model}", "no-such-model").replace("{version}", "1").replace("{name}", "none")
        for method, operation in operations.items():
            rpc = operation["x-offshelf-rpc"]
            service, name = rpc.strip("/").split("/") if rpc else ("", "")
            needed = REQUIRED_ROLES[service][name] if rpc and operation.get("security") != [] else None
            for who, token in [("none", None), ("wrong", "not-a-token"), *TOKENS.items()]:
                headers = {"authorization": f"Bearer {token}"} if token else {}
                status = requests.request(method, server.http_url + concrete, headers=headers, timeout=30).status_code
                if needed is None or who in ROLES and ROLES.index(who) >= ROLES.index(needed):
                    expected = "not 401 or 403"
                    denied = status in (401, 403)
                else:
                    expected = 401 if who in ("none", "wrong") else 403
                    denied = status != expected
                if denied:
                    wrong.append((method, path, who, status, expected))
    assert wrong == []


def test_health_stays_open_for_probes(secured):
    _, channel, _ = secured
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_health_list_answers_every_service_on_both_ports_without_a_token_or_a_traceback(secured):
    server, channel, _ = secured
    health_port = next(e for e in server.logs if e.get("message") == "listening")["health_port"]
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as probe_channel:
        for stub in (health_pb2_grpc.HealthStub(channel), health_pb2_grpc.HealthStub(probe_channel)):
            answer = stub.List(health_pb2.HealthListRequest(), timeout=10)
            statuses = {name: reply.status for name, reply in answer.statuses.items()}
            assert statuses[""] == health_pb2.HealthCheckResponse.SERVING
            assert statuses["offshelf.v1.Index"] == health_pb2.HealthCheckResponse.SERVING
            assert "inference.GRPCInferenceService" in statuses
    assert [e for e in server.logs if "exception" in e or e["level"] == "error"] == []


def test_no_rpc_the_server_exposes_answers_internal(secured):
    """Every method of every service, health and reflection included, called with an empty request and the admin
    token: refusals are precise, never INTERNAL or UNKNOWN."""
    _, channel, _ = secured
    methods = list(every_method())
    for service in health_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            if not method.server_streaming:  # Watch streams until its caller leaves
                request = message_factory.GetMessageClass(method.input_type)
                methods.append((f"/{service.full_name}/{method.name}", request, False, False))
    answered = {method: call(channel, method, *rest, TOKENS["admin"]) for method, *rest in methods}
    assert {m: c for m, c in answered.items() if c in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)} == {}


def test_a_rotated_tokens_file_takes_effect_without_a_restart(secured, tmp_path):
    _, channel, path = secured
    list_models = "/offshelf.v1.Embedding/ListModels"
    request = embedding_pb2.ListModelsRequest
    assert call(channel, list_models, request, False, False, TOKENS["read"]) == grpc.StatusCode.OK
    rotated = {**TOKENS, READ: "r0tated-read-t0ken"}
    staged = tokens_file(tmp_path / "tokens", rotated)
    staged.replace(path)  # as a Secret volume swaps its files
    assert call(channel, list_models, request, False, False, TOKENS["read"]) == grpc.StatusCode.UNAUTHENTICATED
    assert call(channel, list_models, request, False, False, rotated["read"]) == grpc.StatusCode.OK
    tokens_file(path, TOKENS)


def test_the_denials_are_counted(secured):
    import urllib.request

    server, channel, _ = secured
    call(channel, "/offshelf.v1.Index/CreateCollection", index_pb2.CreateCollectionRequest, False, False, None)
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert 'offshelf_requests_total{code="UNAUTHENTICATED",model="",rpc="CreateCollection"}' in text


def test_reflection_can_be_turned_off(tiny_repo, tmp_path):
    server = ServerProcess(tiny_repo, tmp_path / "data", reflection=False, drain_seconds=0)
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            code = call(
                channel,
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                embedding_pb2.ListModelsRequest,  # any message: the method is not there
                True,
                True,
                None,
            )
        assert code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.kill()


def logged(server, message: str, count: int = 1, timeout: float = 30) -> list[dict]:
    """The auth log lines so far once `count` of them say `message` (the log arrives through a pipe)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [e for e in server.logs if e.get("logger") == "offshelf.service.api.auth"]
        if sum(e["message"] == message for e in lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def reload_errors(server) -> float:
    import urllib.request

    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    line = next((x for x in text.splitlines() if x.startswith("offshelf_tokens_reload_errors_total ")), None)
    return float(line.split()[1]) if line else 0.0


def test_a_revocation_in_a_refused_tokens_file_still_takes_effect(tiny_repo, tmp_path):
    """The rule (docs/api.md, Authentication): a file that cannot be read whole is refused (an error line, a counter)
    and the last good set stays, but only for the tokens the new file's readable lines still hold, at the lower of
    the two roles; a deleted file revokes every token."""
    path = tokens_file(tmp_path / "tokens", TOKENS)
    server = ServerProcess(tiny_repo, tmp_path / "data", tokens_file=path, drain_seconds=0)
    list_models = ("/offshelf.v1.Embedding/ListModels", embedding_pb2.ListModelsRequest, False, False)
    create = ("/offshelf.v1.Index/CreateCollection", index_pb2.CreateCollectionRequest, False, False)
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            assert call(channel, *list_models, TOKENS["read"]) == grpc.StatusCode.OK
            sha = {role: hashlib.sha256(token.encode()).hexdigest() for role, token in TOKENS.items()}
            staged = tmp_path / "staged"
            staged.write_text(
                f"write {sha['write']}\n"  # the read token removed
                f"read {sha['admin']}  demoted\n"
                f"admin {hashlib.sha256(b'new-t0ken').hexdigest()}  added by the same edit\n"
                f"superuser {sha['write']}\n"  # an unknown role: the file is refused
            )
            staged.replace(path)
            assert call(channel, *list_models, TOKENS["read"]) == grpc.StatusCode.UNAUTHENTICATED
            assert call(channel, *list_models, TOKENS["write"]) == grpc.StatusCode.OK
            assert call(channel, *create, TOKENS["admin"]) == grpc.StatusCode.PERMISSION_DENIED
            assert call(channel, *list_models, TOKENS["admin"]) == grpc.StatusCode.OK
            assert call(channel, *list_models, "new-t0ken") == grpc.StatusCode.UNAUTHENTICATED
            refused = [e for e in logged(server, "tokens file refused") if e["message"] == "tokens file refused"]
            assert len(refused) == 1 and refused[0]["level"] == "error" and "line 4" in refused[0]["error"]
            assert reload_errors(server) == 1

            path.unlink()
            for token in TOKENS.values():
                assert call(channel, *list_models, token) == grpc.StatusCode.UNAUTHENTICATED
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert reload_errors(server) == 2

            tokens_file(path, TOKENS)
            assert call(channel, *create, TOKENS["admin"]) not in DENIED
            assert logged(server, "tokens file reloaded")[-1]["message"] == "tokens file reloaded"
    finally:
        server.kill()


def test_a_tokens_file_that_others_can_write_is_refused(tiny_repo, tmp_path):
    path = tokens_file(tmp_path / "tokens", TOKENS)
    path.chmod(0o666)
    error = the_error(serve(tiny_repo, tmp_path / "data", tokens_file=str(path)))
    assert str(path) in error and "0o666" in error and "chmod o-w" in error

    path.chmod(0o644)  # others may read it: served, with a warning
    server = ServerProcess(tiny_repo, tmp_path / "data", tokens_file=path, drain_seconds=0)
    try:
        server.wait_serving()
        warning = next(e for e in server.logs if e.get("message") == "others can read the tokens file")
        assert warning["level"] == "warning" and warning["path"] == str(path)
        with grpc.insecure_channel(server.address) as channel:
            list_models = ("/offshelf.v1.Embedding/ListModels", embedding_pb2.ListModelsRequest, False, False)
            tokens_file(path, {**TOKENS, "admin": "sneaked-in"})  # written in place: mode kept
            path.chmod(0o646)
            assert call(channel, *list_models, "sneaked-in") == grpc.StatusCode.UNAUTHENTICATED
            assert call(channel, *list_models, TOKENS["read"]) == grpc.StatusCode.OK
            assert call(channel, *list_models, TOKENS["admin"]) == grpc.StatusCode.UNAUTHENTICATED  # removed
            refused = next(e for e in logged(server, "tokens file refused") if e["message"] == "tokens file refused")
            assert "0o646" in refused["error"]
    finally:
        server.kill()
