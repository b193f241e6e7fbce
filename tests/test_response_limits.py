"""Responses bounded before they are built (issue 23, item 21): a small request cannot make the server build a
response of hundreds of MB. Search hits and items carry their metadata (up to 16 KiB each) and vectors."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pydantic
import pytest

from offshelf.clients import Client
from offshelf.service.settings import ServiceSettings

from common import ServerProcess

TINY = "random-projection-1280"


def status_of(call) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code().name, caught.value.details()


def heavy_collection(client: Client, count: int) -> str:
    """A collection of `count` items with 16 KiB of metadata each (16 entries of 1 KiB, the most Add takes)."""
    name = f"heavy-{uuid.uuid4().hex[:8]}"
    client.create_collection(name, model=TINY)
    vectors = np.random.default_rng(0).standard_normal((count, 1280)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metadata = [{f"key{j:02d}": "x" * 1015 for j in range(16)} for _ in range(count)]
    client.add(name, vectors=vectors, ids=[f"item-{i}" for i in range(count)], metadata=metadata)
    return name


def test_a_search_batch_whose_hits_carry_too_much_metadata_is_refused_before_it_is_built(tiny_server):
    """1,000 id queries x k=10 (a 20 KB request) asked for a 161 MB response: built, then refused at send."""
    with Client(tiny_server.address, timeout=120) as client:
        name = heavy_collection(client, 20)
        ids = [f"item-{i % 20}" for i in range(1000)]
        code, details = status_of(lambda: client.search_batch(name, ids=ids, k=10))
        assert code == "INVALID_ARGUMENT", details
        assert "10000 hits" in details and "--max-response-bytes" in details and "fewer queries" in details
        hits = client.search_batch(name, ids=ids[:50], k=10)  # 8 MB: under the limit
        assert [len(row) for row in hits] == [10] * 50 and len(hits[0][0].metadata) == 16
        client.delete_collection(name)


def test_list_and_get_items_are_bounded_with_their_metadata_and_vectors(tiny_repo, tmp_path):
    server = ServerProcess(tiny_repo, tmp_path / "data", max_response_bytes=1 << 20)
    try:
        server.wait_serving()
        with Client(server.address, timeout=60) as client:
            name = heavy_collection(client, 100)  # 1.6 MB of metadata
            code, details = status_of(lambda: client.list_items_page(name, page_size=100))
            assert code == "INVALID_ARGUMENT" and "smaller page_size" in details and "1.0 MiB" in details
            items, _ = client.list_items_page(name, page_size=50)
            assert len(items) == 50
            ids = [f"item-{i}" for i in range(100)]
            code, details = status_of(lambda: client.get_items(name, ids))
            assert code == "INVALID_ARGUMENT" and "100 items" in details and "fewer ids" in details
            assert len(client.get_items(name, ids[:50])) == 50
            many = [f"absent-{i}" for i in range(1000)]  # 1,000 vectors of 1280 values: 5 MB, refused unread
            code, details = status_of(lambda: client.get_items(name, many, with_vectors=True))
            assert code == "INVALID_ARGUMENT" and "1000 vectors" in details and "without vectors" in details
            code, details = status_of(lambda: client.list_items_page(name, page_size=1000, with_vectors=True))
            assert code == "INVALID_ARGUMENT" and "1000 vectors" in details
    finally:
        server.kill()


def test_the_response_limit_fits_in_a_grpc_message(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="at most max_message_bytes"):
        ServiceSettings(repo=tmp_path, max_response_bytes=64 << 20, max_message_bytes=32 << 20)
