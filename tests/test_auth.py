"""Bearer tokens with roles (issue 14, section 1): every RPC of every service x {no token, a wrong one, read, write,
admin}, on a real server with a tokens file; zero calls get past a role they lack."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from offshelf.protos.inference import grpc_predict_v2_pb2
from offshelf.protos.v1 import embedding_pb2, heads_pb2, index_pb2
from offshelf.service.api.auth import READ, REQUIRED_ROLES, ROLES

from support import ServerProcess

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
    server = ServerProcess(tiny_repo, folder / "data", tokens_file=path, drain_seconds=0)
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


def test_health_stays_open_for_probes(secured):
    _, channel, _ = secured
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


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
