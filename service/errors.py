"""The service's errors. ServiceError: what a request is answered with, each carrying its gRPC status.
StartupError: what keeps the server from becoming ready (a model, collection or head that cannot be served)."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error a caller can act on; its message says what to fix."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DecodeError(InvalidArgument):
    """An image that cannot be decoded; reason (empty, too_large, unsupported_format, corrupt) labels a metric."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    """Overloaded, loading or shutting down: the caller may retry with backoff."""

    code = grpc.StatusCode.UNAVAILABLE


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL


class StartupError(Exception):
    """Something the server must serve cannot be loaded, or it cannot listen: it logs the message and exits 1."""


class ModelLoadError(StartupError):
    """A model in the repository cannot be served."""


class CollectionLoadError(StartupError):
    """A collection on disk cannot be restored consistently."""


class HeadLoadError(StartupError):
    """A head version on disk cannot be loaded."""


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Cancelled(ServiceError):
    """The caller has gone: nobody reads the answer."""

    code = grpc.StatusCode.CANCELLED
