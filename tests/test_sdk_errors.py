"""The SDK's typed errors against the real server: one class per status, still grpc.RpcError for old callers."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from offshelf.clients import (
    AlreadyExists,
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    OffshelfError,
    TrainingFailed,
    Unavailable,
)

from common import skimage_photo


def test_server_statuses_raise_their_own_class_that_is_still_a_grpc_error(client):
    with pytest.raises(NotFound) as missing:
        client.get_collection("errors-missing")
    err = missing.value
    assert isinstance(err, OffshelfError) and isinstance(err, grpc.RpcError)
    assert err.code() == err.status == grpc.StatusCode.NOT_FOUND
    assert err.details() == err.message and "errors-missing" in err.message
    assert str(err) == f"NOT_FOUND: {err.message}"
    assert isinstance(err.__cause__, grpc.RpcError)  # the raw gRPC error stays reachable
    with pytest.raises(InvalidArgument, match="image 0"):
        client.embed([b"not an image"])
    client.create_collection("errors-taken")
    try:
        with pytest.raises(AlreadyExists):
            client.create_collection("errors-taken")
    finally:
        client.delete_collection("errors-taken")


def test_a_refusal_caused_by_one_item_names_it_in_the_status_details(client):
    """The item's position comes as a google.rpc.ErrorInfo detail (what --skip-bad drops), not from the message."""
    photo = skimage_photo("chelsea.png").read_bytes()
    with pytest.raises(InvalidArgument) as undecodable:
        client.embed([photo, b"not an image", photo])
    assert undecodable.value.item == 1
    client.create_collection("errors-items")
    try:
        with pytest.raises(InvalidArgument) as undecodable:
            client.add("errors-items", images=[photo, photo, b"GIF89a broken"], ids=["a", "b", "c"])
        assert undecodable.value.item == 2
        with pytest.raises(InvalidArgument) as repeated:
            client.add("errors-items", images=[photo, photo], ids=["a", "a"])
        assert repeated.value.item == 1
        with pytest.raises(NotFound) as missing:
            client.get_collection("errors-missing")
        assert missing.value.item is None
    finally:
        client.delete_collection("errors-items")


def test_unreachable_and_late_calls_raise_unavailable_and_deadline_exceeded(server):
    with Client("127.0.0.1:1", timeout=2, retries=0) as nowhere, pytest.raises(Unavailable):
        nowhere.list_models()
    with Client(server.address, timeout=0.001) as hurried, pytest.raises(DeadlineExceeded) as late:
        hurried.embed([skimage_photo("coffee.png")] * 10)
    assert isinstance(late.value, TimeoutError)


def test_async_client_raises_the_same_classes(server):
    async def missing_collection() -> None:
        async with AsyncClient(server.address) as aclient:
            await aclient.get_collection("errors-missing")

    with pytest.raises(NotFound) as caught:
        asyncio.run(missing_collection())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


def test_wait_for_head_raises_training_failed_and_deadline_exceeded(client):
    rng = np.random.default_rng(0)
    client.create_collection("errors-heads")
    try:
        client.add("errors-heads", vectors=rng.standard_normal((4, 1280)), labels=["only"] * 4)
        client.train_head("errors-one-class", "logreg", collection="errors-heads")
        with pytest.raises(TrainingFailed, match="at least 2 classes") as failed:
            client.wait_for_head("errors-one-class")
        assert isinstance(failed.value, RuntimeError) and failed.value.code() == grpc.StatusCode.ABORTED
        centres = np.repeat(rng.standard_normal((2, 1280)), 100, axis=0)
        client.add("errors-heads", vectors=centres + rng.standard_normal((200, 1280)), labels=["a"] * 100 + ["b"] * 100)
        client.train_head("errors-slow", "logreg", collection="errors-heads")
        with pytest.raises(DeadlineExceeded, match="still training") as late:
            client.wait_for_head("errors-slow", timeout=0)
        assert isinstance(late.value, TimeoutError)
        client.wait_for_head("errors-slow")
    finally:
        client.delete_collection("errors-heads")
        for head in ("errors-one-class", "errors-slow"):
            client.delete_head(head)
