"""offshelf clients: the Python SDK (sync and asyncio), its typed errors, and the ``offshelf`` command line."""

from offshelf.clients.client import AsyncClient, Client, Hit, Label, StoredItem
from offshelf.clients.connection import Connection
from offshelf.clients.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OffshelfError,
    PermissionDenied,
    ResourceExhausted,
    TrainingFailed,
    Unauthenticated,
    Unavailable,
    UnexpectedStatus,
)

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "Connection",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Hit",
    "Internal",
    "InvalidArgument",
    "Label",
    "NotFound",
    "OffshelfError",
    "PermissionDenied",
    "ResourceExhausted",
    "StoredItem",
    "TrainingFailed",
    "Unauthenticated",
    "Unavailable",
    "UnexpectedStatus",
]
