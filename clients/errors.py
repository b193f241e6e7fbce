"""Typed errors of the SDK: one class per gRPC status a caller meets, each carrying the server's message.

Every class is a ``grpc.RpcError`` with ``code()`` and ``details()``, so code written against raw gRPC errors
(``except grpc.RpcError as err: err.code()``) keeps working.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

REQUEST_ID_HEADER = "x-request-id"
DETAILS_HEADER = "grpc-status-details-bin"  # google.rpc.Status; the server's ErrorInfo names an item at fault


class OffshelfError(grpc.RpcError):
    """A call that failed: ``status`` (a grpc.StatusCode), ``message`` (what the server says to fix) and
    ``request_id`` (the call's x-request-id, which the server's log lines about it carry; "" when unknown);
    ``item``: the index of the request's item (or image) at fault when the refusal is about one, else None."""

    status: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, status: grpc.StatusCode | None = None, request_id: str = "", item: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.item = item
        if status is not None:
            self.status = status

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.message

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"


class InvalidArgument(OffshelfError):
    """The request is malformed; fix it, do not retry."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(OffshelfError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(OffshelfError):
    status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(OffshelfError):
    """The request does not fit the server's state (e.g. a collection bound to another model)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(OffshelfError):
    """Unreachable, overloaded, loading or draining; the SDK has already retried with backoff."""

    status = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(OffshelfError, TimeoutError):
    """The deadline passed. Also a TimeoutError, so ``except TimeoutError`` catches it."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


class PermissionDenied(OffshelfError):
    status = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(OffshelfError):
    """No valid credentials: pass ``token=`` (or the CLI's --token / $OFFSHELF_TOKEN)."""

    status = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(OffshelfError):
    """A limit was hit, e.g. a message larger than the server's max_message_bytes."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Internal(OffshelfError):
    """A server bug; the server's log has the traceback."""

    status = grpc.StatusCode.INTERNAL


class UnexpectedStatus(OffshelfError):
    """Any other status (CANCELLED, UNIMPLEMENTED, UNKNOWN, ...); ``status`` says which."""


class TrainingFailed(OffshelfError, RuntimeError):
    """wait_for_head: the head's training job failed; ``message`` is the job's. Also a RuntimeError, which
    wait_for_head raised before typed errors existed. Its status is ABORTED: the job ended without a result."""

    status = grpc.StatusCode.ABORTED


BY_STATUS: dict[grpc.StatusCode, type[OffshelfError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Internal,
    )
}


def from_rpc_error(err: grpc.RpcError, request_id: str = "") -> OffshelfError:
    """The typed error of a failed call, from grpc or grpc.aio; an OffshelfError is returned as it is. Its
    request id is the one the server answered with (trailing metadata x-request-id), else `request_id` (sent)."""
    if isinstance(err, OffshelfError):
        return err
    # A bare grpc.RpcError (not raised by a call) has neither code() nor details().
    status = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or str(err)
    trailing = tuple(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else ()
    answered = [value for key, value in trailing if key == REQUEST_ID_HEADER and isinstance(value, str)]
    return BY_STATUS.get(status, UnexpectedStatus)(
        message, status, answered[0] if answered else request_id, item_at_fault(trailing)
    )


def item_at_fault(trailing: tuple[tuple[str, str | bytes], ...]) -> int | None:
    """The index of the item a refusal names, from the status details' ErrorInfo (reason BAD_ITEM)."""
    for key, value in trailing:
        if key != DETAILS_HEADER or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.reason == "BAD_ITEM" and info.metadata.get("index", "").isdigit():
                return int(info.metadata["index"])
    return None
