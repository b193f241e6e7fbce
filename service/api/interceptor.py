"""Answers a ServiceError with its gRPC status (api/statuses.py); counts every RPC but health checks by method,
status code and model, the RPCs in flight, and decode failures by reason; gives each call a request id and an access
log line; refuses calls beyond the concurrency limit and while the server shuts down.

Both live here because the status code is known only once the error is mapped. Anything
that is not a ServiceError is logged and answered INTERNAL, never UNKNOWN.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from offshelf.service import cancellation, request_context
from offshelf.service.api.auth import Tokens, required_role
from offshelf.service.api.statuses import item_details, status_of
from offshelf.service.errors import DecodeError, InvalidArgument, ServiceError, Unavailable
from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics

log = logging.getLogger(__name__)
access = logging.getLogger("offshelf.access")  # one line per call (settings.access_log)
MAX_MESSAGE = 1000  # characters of an error message
QUIET_SECONDS = 0.1  # on shutdown, calls are held until none has arrived for this long


class CallSlots:
    """At most `limit` calls handled at once. Without a limit, calls beyond the worker threads wait in the thread
    pool's unbounded queue: never refused, and health checks wait behind them. Calls beyond the limit are refused
    at once by the threads it leaves free.

    On shutdown (close, then refuse_held), calls that arrive once the calls in progress are ending are held, then
    refused once gRPC has stopped taking calls. Refused at once, their callers would send again at once; gRPC
    answers CANCELLED, not UNAVAILABLE, to calls it has received but not yet handed over when it stops
    (grpc/grpc#41785), which callers must not retry."""

    def __init__(self, limit: int):
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)
        self._closing = threading.Event()
        self._refusing = threading.Event()
        self._lock = threading.Lock()
        self.held = 0

    @property
    def closing(self) -> bool:
        """From close() on, take() holds the caller until refuse_held()."""
        return self._closing.is_set()

    def take(self) -> None:
        if self._closing.is_set():
            with self._lock:
                self.held += 1
            self._refusing.wait()
            raise Unavailable("the server is shutting down; retry on another replica")
        if not self._free.acquire(blocking=False):
            raise Unavailable(f"the server is handling its limit of {self.limit} calls; retry with backoff")

    def give_back(self) -> None:
        self._free.release()

    def close(self, timeout: float) -> bool:
        """Holds every new call from now on; waits up to `timeout` seconds for the calls in progress to end. True
        if they all did."""
        self._closing.set()
        deadline = time.monotonic() + timeout
        taken = 0
        while taken < self.limit and self._free.acquire(timeout=max(0.0, deadline - time.monotonic())):
            taken += 1
        held = -1
        while held != self.held and time.monotonic() < deadline:  # until callers have stopped sending
            held = self.held
            time.sleep(min(QUIET_SECONDS, max(0.0, deadline - time.monotonic())))
        return taken == self.limit

    def refuse_held(self) -> None:
        """Answers the held calls, and any later one, UNAVAILABLE."""
        self._refusing.set()


class RpcInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: Metrics, slots: CallSlots, tokens: Tokens | None = None, access_log: bool = True):
        self.metrics = metrics
        self.slots = slots
        self.tokens = tokens  # None: no authentication (a server on loopback only, or --insecure)
        self.access_log = access_log

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        rpc = method.rsplit("/", 1)[-1]
        deserialize = tolerant(handler.request_deserializer)
        if required_role(method) is None:  # health and reflection: open, answered whatever the load, not counted
            if handler.unary_unary is None:
                return handler  # server-streaming (health Watch) and reflection pass through
            return grpc.unary_unary_rpc_method_handler(
                self._open(rpc, well_formed(handler.unary_unary)), deserialize, handler.response_serializer
            )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(rpc, method, well_formed(handler.unary_unary)), deserialize, handler.response_serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(rpc, method, well_formed_stream(handler.stream_unary)),
                deserialize,
                handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._guard(rpc, method, well_formed_stream(handler.stream_stream)),
                deserialize,
                handler.response_serializer,
            )
        return handler

    def _authorize(self, method: str, context: grpc.ServicerContext) -> None:
        if self.tokens is not None:
            self.tokens.check(method, context.invocation_metadata())

    @staticmethod
    @contextlib.contextmanager
    def _serving(context: grpc.ServicerContext) -> Iterator[request_context.RequestContext]:
        """The call's request context, current while it is served: its request id (the caller's x-request-id or a
        new one) is sent back in the trailing metadata."""
        request_id = request_context.request_id_from(context.invocation_metadata())
        context.set_trailing_metadata(((request_context.HEADER, request_id),))
        served = request_context.RequestContext(request_id)
        token = request_context.current.set(served)
        try:
            yield served
        finally:
            request_context.current.reset(token)

    def _open(self, rpc: str, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        """A health check: errors mapped to their status, nothing counted or logged (probes would swamp both)."""

        def answered(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except ServiceError as err:
                context.abort(status_of(err), shortened(err.message))
            except Exception:
                log.exception("unexpected error", extra=fields(rpc=rpc))
                context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed on an unexpected server error; see its log")

        return answered

    def _guard(self, rpc: str, method: str, behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """A bidirectional stream (ModelStreamInfer): the caller's token checked before it starts, the stream
        counted once when it ends."""

        def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            with self._serving(context) as served:
                self._take_slot(rpc, started, context, served)
                code = grpc.StatusCode.INTERNAL
                try:
                    self._authorize(method, context)
                    yield from behavior(requests, context)
                    code = grpc.StatusCode.OK
                except ServiceError as err:  # a refused token, or a malformed message in the stream
                    code = status_of(err)
                    context.abort(code, shortened(err.message))
                finally:
                    self.slots.give_back()
                    self._record(rpc, gone(context) or code, started, context, served)

        return guarded

    def _wrap(self, rpc: str, method: str, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            with self._serving(context) as served:
                self._take_slot(rpc, started, context, served)
                return self._answer(rpc, method, behavior, request, context, started, served)

        return wrapped

    def _answer(
        self,
        rpc: str,
        method: str,
        behavior: Callable[[Any, grpc.ServicerContext], Any],
        request: Any,
        context: grpc.ServicerContext,
        started: float,
        served: request_context.RequestContext,
    ) -> Any:
        """Runs the call in its slot: authorised, cancellable, its errors mapped to a status, counted."""
        in_flight = self.metrics.in_flight.labels(rpc)
        in_flight.inc()
        call = cancellation.Call()
        if not context.add_callback(call.cancel):  # the call ended before its handler started
            call.cancel()
        token = cancellation.current.set(call)
        try:
            self._authorize(method, context)
            response = behavior(request, context)
        except ServiceError as err:
            code, message, item = status_of(err), shortened(err.message), err.item
            if isinstance(err, DecodeError):
                self.metrics.decode_failures.labels(err.reason).inc()
        except Exception:
            log.exception("unexpected error", extra=fields(rpc=rpc))
            code, message, item = (
                grpc.StatusCode.INTERNAL,
                f"{rpc} failed on an unexpected server error; see its log",
                None,
            )
        else:
            self._record(rpc, gone(context) or context.code() or grpc.StatusCode.OK, started, context, served)
            return response
        finally:
            cancellation.current.reset(token)
            in_flight.dec()
            self.slots.give_back()
        code = gone(context) or code
        self._record(rpc, code, started, context, served)
        if item is not None:
            context.set_trailing_metadata(
                ((request_context.HEADER, served.request_id), item_details(code, message, item))
            )
        context.abort(code, message)

    def _take_slot(
        self, rpc: str, started: float, context: grpc.ServicerContext, served: request_context.RequestContext
    ) -> None:
        """A call slot for this call; refused (counted, then aborted) when there is none or the server stops."""
        try:
            self.slots.take()
        except ServiceError as err:
            self._record(rpc, status_of(err), started, context, served)
            context.abort(status_of(err), err.message)

    def _record(
        self,
        rpc: str,
        code: grpc.StatusCode,
        started: float,
        context: grpc.ServicerContext,
        served: request_context.RequestContext,
    ) -> None:
        """Counts the call, and logs its access log line."""
        seconds = time.perf_counter() - started
        self.metrics.requests.labels(rpc, code.name, served.model).inc()
        self.metrics.request_seconds.labels(rpc).observe(seconds)
        if self.access_log:
            access.info(
                "call",
                extra=fields(
                    rpc=rpc,
                    code=code.name,
                    ms=round(seconds * 1000, 2),
                    model=served.model,
                    images=served.images,
                    peer=context.peer(),
                ),
            )


def shortened(message: str, limit: int = MAX_MESSAGE) -> str:
    """An error message cut to `limit` characters: it may echo a caller's input, and status details travel in
    headers, which have a size limit."""
    if len(message) <= limit:
        return message
    return f"{message[: limit - 40]}... ({len(message) - limit + 40} characters cut)"


def gone(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """How the call ended if its caller has gone: CANCELLED, or DEADLINE_EXCEEDED when its deadline passed."""
    if context.is_active():
        return None
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED


class Malformed:
    """A request message that did not parse (invalid UTF-8 in a string field, a truncated message, ...): handed to
    the handler instead of gRPC's own INTERNAL, so that the caller gets INVALID_ARGUMENT and the call is counted."""

    def __init__(self, error: Exception):
        self.error = error


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as err:  # protobuf's DecodeError, or whatever a deserializer raises
            return Malformed(err)

    return parse


def refuse(request: Malformed) -> InvalidArgument:
    return InvalidArgument(f"the request is not a valid message ({request.error}); send well-formed protobuf")


def well_formed(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            raise refuse(request)
        return behavior(request, context)

    return checked


def well_formed_stream(behavior: Callable[[Iterator[Any], grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        def parsed() -> Iterator[Any]:
            for request in requests:
                if isinstance(request, Malformed):
                    raise refuse(request)
                yield request

        return behavior(parsed(), context)

    return checked
