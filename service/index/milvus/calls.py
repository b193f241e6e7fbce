"""Calls to Milvus: its errors as the service's, and string literals of its expression language. Every module of
the Milvus store builds on this one."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from pymilvus import MilvusException

from offshelf.service.errors import Internal, NotFound, Unavailable

COLLECTION_NOT_FOUND, COLLECTION_NOT_LOADED = 100, 101  # Milvus's error codes


def quoted(text: str) -> str:
    """A string literal of Milvus's expression language (its escapes are JSON's)."""
    return json.dumps(text, ensure_ascii=False)


class TableGone(NotFound):
    """The table a replica addressed is gone (renamed for whitening, replaced, or the collection deleted)."""


def is_gone(err: MilvusException) -> bool:
    """Whether Milvus answered that the table (or alias) does not exist."""
    message = err.message or str(err)
    return err.code == COLLECTION_NOT_FOUND or "collection not found" in message or "can't find collection" in message


def unreachable(err: MilvusException) -> bool:
    """Whether the call did not reach Milvus (refused, reset, timed out), as opposed to Milvus refusing it."""
    message = (err.message or str(err)).lower()
    return any(sign in message for sign in ("unavailable", "deadline", "connect", "retry timeout"))


@contextlib.contextmanager
def milvus_errors(name: str) -> Iterator[None]:
    """Milvus's errors as the service's: a missing collection is NOT_FOUND; an unreachable Milvus, or one still
    loading a table after a restart, UNAVAILABLE (the client in registry.py names Milvus's address)."""
    try:
        yield
    except MilvusException as err:
        message = err.message or str(err)
        if is_gone(err):
            raise TableGone(f"no collection named {name!r}; ListCollections lists them") from err
        if err.code == COLLECTION_NOT_LOADED or "not loaded" in message:
            raise Unavailable(f"Milvus is still loading collection {name!r} (as after its restart); retry") from err
        if unreachable(err):
            raise Unavailable(f"Milvus does not answer ({message}); retry, and check OFFSHELF_MILVUS_URI") from err
        raise Internal(f"Milvus refused the call on collection {name!r}: {message}") from err
