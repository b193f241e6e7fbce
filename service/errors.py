"""The engine's errors, free of any wire: each subclass of ServiceError is a kind of refusal a caller can act on,
and each door maps the kinds to its own statuses in one place (gRPC: api/statuses.py).
StartupError: what keeps the server from becoming ready (a model, collection or head that cannot be served)."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a caller can act on; its message says what to fix. item: the index of the request's item at fault,
    when one is (a client drops it and sends the rest again: `offshelf add --skip-bad`)."""

    def __init__(self, message: str, item: int | None = None):
        super().__init__(message)
        self.message = message
        self.item = item


class InvalidArgument(ServiceError):
    """The request itself is wrong."""


class DecodeError(InvalidArgument):
    """An image that cannot be decoded; reason (empty, too_large, unsupported_format, corrupt) labels a metric."""

    def __init__(self, message: str, reason: str, item: int | None = None):
        super().__init__(message, item)
        self.reason = reason


class NotFound(ServiceError):
    """What the request names does not exist."""


class AlreadyExists(ServiceError):
    """What the request would create exists already."""


class FailedPrecondition(ServiceError):
    """The request is valid but the state it meets does not allow it."""


class Unavailable(ServiceError):
    """Overloaded, loading or shutting down: the caller may retry with backoff."""


class Unauthenticated(ServiceError):
    """No valid token."""


class PermissionDenied(ServiceError):
    """A valid token whose role does not allow the call."""


class Cancelled(ServiceError):
    """The caller has gone: nobody reads the answer."""


class Internal(ServiceError):
    """A fault of the server's; its log has the detail."""


class StartupError(Exception):
    """Something the server must serve cannot be loaded, or it cannot listen: it logs the message and exits 1."""


class ModelLoadError(StartupError):
    """A model in the repository cannot be served."""


class CollectionLoadError(StartupError):
    """A collection on disk cannot be restored consistently."""


class HeadLoadError(StartupError):
    """A head version on disk cannot be loaded."""
