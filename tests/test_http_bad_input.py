"""Hostile and careless input over HTTP: every route the door serves (as /openapi.json lists them) x bodies a
careless or hostile caller sends. Each gets a 4xx with a JSON error naming the fix; never a 500, a hang or a
traceback in the log. On the tiny model, with a collection and a head's absence to meet."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from offshelf.clients import Client

from common import serving

TINY = "random-projection-1280"
BODIES = {
    "empty": (b"", "application/json"),
    "null": (b"null", "application/json"),
    "a list": (b"[1, 2]", "application/json"),
    "not json": (b"{'k': 3", "application/json"),
    "invalid utf-8": (b'{"name": "\xff\xfe"}', "application/json"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    "wrong types": (
        b'{"k": "x", "images": [1], "items": "x", "inputs": {"a": 1}, "name": 7, "ids": [[]], "input": 3}',
        "application/json",
    ),
    "unknown fields": (b'{"colour": "red", "parameters": {"x": [1]}}', "application/json"),
    "NaN vector": (
        b'{"vector": {"values": [NaN, 1]}, "k": 3, "items": [{"vector": {"values": [NaN]}}]}',
        "application/json",
    ),
    "huge numbers": (b'{"k": 1e400, "page_size": 99999999999999999999, "version": -1}', "application/json"),
    "multipart without boundary": (b"--x\r\n", "multipart/form-data"),
    "broken multipart": (
        b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
        "multipart/form-data; boundary=b",
    ),
    "multipart bad request part": (
        b'--b\r\nContent-Disposition: form-data; name="request"\r\n\r\n{"k":\r\n--b\r\n'
        b'Content-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\nnot an image\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
    ),
    "binary header longer than the body": (b'{"inputs": []}', "application/octet-stream"),
}  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_repo, tmp_path_factory):
    with serving(tiny_repo, tmp_path_factory.mktemp("http-bad") / "data", http_port=0, drain_seconds=0) as running:
        with Client(running.address, timeout=60) as client:
            client.create_collection("probed", model=TINY)
            client.add("probed", vectors=np.eye(4, 1280, dtype=np.float32), ids=list("abcd"))
        yield running


def routes(server) -> list[tuple[str, str]]:
    document = requests.get(f"{server.http_url}/openapi.json", timeout=30).json()
    return [(method.upper(), path) for path, operations in document["paths"].items() for method in operations]


@pytest.mark.parametrize("body", BODIES)
def test_every_route_refuses_a_bad_body_with_a_4xx_and_a_json_error(server, body):
    data, content_type = BODIES[body]
    headers = {"content-type": content_type}
    if body == "binary header longer than the body":
        headers["inference-header-content-length"] = "999"
    answered, logged = {}, len(server.logs)
    for method, path in routes(server):
        if path.startswith("/v2/repository/models"):  # loading and unloading the tiny model is not the point here
            continue
        concrete = path.replace("{model}", TINY).replace("{version}", "1").replace("{name}", "probed")
        response = requests.request(method, server.http_url + concrete, data=data, headers=headers, timeout=60)
        answered[(method, path)] = response.status_code
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/json", (method, path)
            assert response.json()["error"], (method, path)
    assert {route: status for route, status in answered.items() if status >= 500} == {}
    assert [e for e in server.logs[logged:] if e.get("level") == "error" or "exception" in e] == []
