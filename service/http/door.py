"""What every HTTP call goes through, as every gRPC call goes through api/interceptor.py: a request id, a call slot
(the same slots as the gRPC port's: one limit for the process), the bearer token's role for the RPC the route
stands for (the same role table), a trace span named as the RPC's, the body read within the size limit, the
engine's work in a worker thread, the engine's errors mapped once (http/statuses.py), a count and an access log
line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from opentelemetry import propagate
from opentelemetry.trace import SpanKind
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from offshelf.service import cancellation, request_context, tracing
from offshelf.service.api.auth import Tokens
from offshelf.service.api.interceptor import CallSlots, shortened
from offshelf.service.errors import DecodeError, ServiceError
from offshelf.service.http.statuses import BodyTooLarge, error_response
from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics

log = logging.getLogger(__name__)
access = logging.getLogger("offshelf.access")
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


class Door:
    def __init__(
        self,
        metrics: Metrics,
        slots: CallSlots,
        tokens: Tokens | None,
        access_log: bool,
        max_body_bytes: int,
        threads: int,
    ):
        self.metrics = metrics
        self.slots = slots
        self.tokens = tokens
        self.access_log = access_log
        self.max_body_bytes = max_body_bytes
        self._threads = anyio.CapacityLimiter(threads)
        self.served: list[tuple[str, str, str | None]] = []  # (method, path, rpc) of every route made

    def route(self, path: str, method: str, rpc: str | None, handler: Handler) -> Route:
        """A route whose calls need the role of `rpc` (a full gRPC method name, /package.Service/Method); None: an
        open route (health, the page), answered whatever the load, neither counted nor logged."""

        self.served.append((method, path, rpc))

        async def endpoint(request: Request) -> Response:
            if rpc is None:
                return await self._open(request, handler)
            return await self._serve(request, path, rpc, handler)

        return Route(path, endpoint, methods=[method])

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """The engine's (blocking) work, in a worker thread that sees this call's request context."""
        return await anyio.to_thread.run_sync(work, *args, limiter=self._threads)

    async def _read_body(self, request: Request) -> None:
        """The request's body, refused (413) once it passes the limit, before it is read whole; kept on the request,
        where handlers read it (request.body(), request.form())."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large(f"{int(declared)} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(f"more than {self.max_body_bytes} bytes")
            chunks.append(chunk)
        request._body = b"".join(chunks)

    def _too_large(self, size: str) -> BodyTooLarge:
        return BodyTooLarge(
            f"the request body holds {size}, more than the limit of {self.max_body_bytes} bytes (max_message_bytes); "
            "send fewer images per request"
        )

    async def _open(self, request: Request, handler: Handler) -> Response:
        request_id = request_context.request_id_from(tuple(request.headers.items()))
        try:
            response = await handler(request)
        except ServiceError as err:
            return error_response(err, shortened(err.message), request_id)
        response.headers["x-request-id"] = request_id
        return response

    async def _serve(self, request: Request, path: str, rpc: str, handler: Handler) -> Response:
        started = time.perf_counter()
        served = request_context.RequestContext(request_context.request_id_from(tuple(request.headers.items())))
        token = request_context.current.set(served)
        caller = propagate.extract(request.headers)  # a traceparent header joins the caller's trace
        try:
            with tracing.tracer.start_as_current_span(rpc, context=caller, kind=SpanKind.SERVER) as span:
                response = await self._answer(request, rpc, handler, served)
                span.set_attributes({"http.request.method": request.method, "http.route": path})
                span.set_attribute("http.response.status_code", response.status_code)
            response.headers["x-request-id"] = served.request_id
            self._record(request, path, rpc, response.status_code, started, served)
        finally:
            request_context.current.reset(token)
        return response

    async def _answer(
        self, request: Request, rpc: str, handler: Handler, served: request_context.RequestContext
    ) -> Response:
        try:
            if self.slots.closing:
                await self.run(self.slots.take)  # holds the call (in a thread) while the server shuts down
            else:
                self.slots.take()  # never blocks
        except ServiceError as err:
            return error_response(err, err.message, served.request_id)
        in_flight = self.metrics.in_flight.labels(rpc.rsplit("/", 1)[-1])
        in_flight.inc()
        call = cancellation.Call()
        token = cancellation.current.set(call)  # the worker threads see it: a caller that goes stops costing
        try:
            if self.tokens is not None:
                self.tokens.check(rpc, [("authorization", request.headers.get("authorization", ""))])
            if request.method in ("POST", "PUT", "PATCH"):
                await self._read_body(request)  # whole, so that what the client sends next can only be its leaving
            watcher = asyncio.ensure_future(self._cancel_when_gone(request, call))  # uvicorn runs asyncio
            try:
                return await handler(request)
            finally:
                watcher.cancel()
        except ServiceError as err:
            if isinstance(err, DecodeError):
                self.metrics.decode_failures.labels(err.reason).inc()
            return error_response(err, shortened(err.message), served.request_id)
        except Exception:
            log.exception("unexpected error", extra=fields(route=request.url.path))
            return JSONResponse(
                {"error": "the call failed on an unexpected server error; see its log", "code": "INTERNAL"}, 500
            )
        finally:
            cancellation.current.reset(token)
            in_flight.dec()
            self.slots.give_back()

    @staticmethod
    async def _cancel_when_gone(request: Request, call: cancellation.Call) -> None:
        """Cancels the call once its client disconnects: its images queued for a batch are dropped, not inferred."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        call.cancel()

    def _record(
        self,
        request: Request,
        path: str,
        rpc: str,
        status: int,
        started: float,
        served: request_context.RequestContext,
    ) -> None:
        seconds = time.perf_counter() - started
        self.metrics.http_requests.labels(request.method, path, str(status), served.model).inc()
        self.metrics.http_request_seconds.labels(request.method, path).observe(seconds)
        if self.access_log:
            client = request.client
            access.info(
                "call",
                extra=fields(
                    protocol="http",
                    rpc=rpc.rsplit("/", 1)[-1],
                    route=f"{request.method} {path}",
                    status=status,
                    ms=round(seconds * 1000, 2),
                    model=served.model,
                    images=served.images,
                    peer=f"{client.host}:{client.port}" if client else "",
                ),
            )
