"""OpenTelemetry tracing: a span per RPC (opentelemetry-instrumentation-grpc) with spans inside it for decoding,
waiting in the batching queue, inference and search, exported over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT is
set (the SDK reads the other OTEL_* variables: service name, sampler, batch delay). Without it the API's tracer is
a no-op and costs nothing."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from opentelemetry import context, trace

if TYPE_CHECKING:  # the engine's modules trace their work without importing gRPC
    import grpc

tracer = trace.get_tracer("offshelf")
Context = context.Context


def configure() -> grpc.ServerInterceptor | None:
    """Sets up the exporter when an endpoint is configured; returns the gRPC server interceptor that starts each
    RPC's span (None when tracing is off)."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.grpc import server_interceptor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME", "offshelf")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return server_interceptor(tracer_provider=provider)


def shutdown() -> None:
    """Exports the spans still buffered."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def current() -> Context:
    """The calling thread's trace context, for work another thread does for it (a batch)."""
    return context.get_current()


def record(name: str, parent: Context, start_ns: int, end_ns: int, **attributes: int) -> None:
    """A span that already happened (queue wait, a batch's run), under `parent`; nothing when it is not traced."""
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return
    span = tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    span.end(end_time=end_ns)
