"""The gRPC door's one map from the engine's errors to statuses, and the structured detail of a refusal that names
one item of the request (google.rpc.ErrorInfo in grpc-status-details-bin, as grpcio-status and other languages'
gRPC libraries read it)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from offshelf.service import errors

STATUS_OF_KIND: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

DETAILS_HEADER = "grpc-status-details-bin"
DOMAIN = "offshelf.v1"
BAD_ITEM = "BAD_ITEM"  # ErrorInfo.reason of a refusal caused by one item; metadata["index"] says which


def status_of(err: errors.ServiceError) -> grpc.StatusCode:
    """The status of an engine error: its kind's, or its nearest parent kind's."""
    for kind in type(err).__mro__:
        if kind in STATUS_OF_KIND:
            return STATUS_OF_KIND[kind]
    return grpc.StatusCode.INTERNAL


def item_details(code: grpc.StatusCode, message: str, item: int) -> tuple[str, bytes]:
    """The trailing metadata entry that names the request's item at fault (its code and message must be the
    status's own for a reader to accept it)."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=BAD_ITEM, domain=DOMAIN, metadata={"index": str(item)}))
    status = status_pb2.Status(code=code.value[0], message=message, details=[info])
    return DETAILS_HEADER, status.SerializeToString()
