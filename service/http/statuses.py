"""The HTTP door's one map from the engine's errors to HTTP status codes, and the JSON body of a refusal.

The body is ``{"error": message, "code": kind, "item": index}``: ``error`` as the Open Inference Protocol's REST
binding has it (so KServe and Triton clients show the message), ``code`` the gRPC status name a gRPC caller would
have got, ``item`` the index of the request's item at fault when one is (as gRPC's BAD_ITEM detail)."""

from __future__ import annotations

from starlette.responses import JSONResponse

from offshelf.service import errors
from offshelf.service.api.statuses import status_of

HTTP_STATUS_OF_KIND: dict[type[errors.ServiceError], int] = {
    errors.InvalidArgument: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.FailedPrecondition: 409,  # the request is valid; the state it meets is not
    errors.Unavailable: 503,
    errors.Cancelled: 499,  # the caller has gone (nginx's "client closed request"): nobody reads it
    errors.Internal: 500,
}
RETRY_AFTER_SECONDS = "1"  # with 503: when an overloaded or loading server may be asked again


class BodyTooLarge(errors.InvalidArgument):
    """A request body beyond the server's limit (413), refused before it is read whole."""


def http_status_of(err: errors.ServiceError) -> int:
    """The HTTP status of an engine error: its kind's, or its nearest parent kind's."""
    if isinstance(err, BodyTooLarge):
        return 413
    for kind in type(err).__mro__:
        if kind in HTTP_STATUS_OF_KIND:
            return HTTP_STATUS_OF_KIND[kind]
    return 500


def error_response(err: errors.ServiceError, message: str, request_id: str) -> JSONResponse:
    body: dict[str, object] = {"error": message, "code": status_of(err).name}
    if err.item is not None:
        body["item"] = err.item
    status = http_status_of(err)
    headers = {"x-request-id": request_id}
    if status == 503:
        headers["retry-after"] = RETRY_AFTER_SECONDS
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(body, status, headers)
