"""OpenTelemetry traces, on only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Off, nothing here imports OpenTelemetry's SDK, exporters or instrumentations. On, each process (a
gunicorn worker, a Celery worker) gets a tracer provider exporting in batches over OTLP
(http/protobuf, or grpc when ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``; the exporter reads
the other ``OTEL_*`` variables itself), and the Django, Celery, psycopg and Redis
instrumentations. The event store keeps each event's trace context in its metadata
(``eventstore.tracing``), so subscriber batches and saga steps continue the request's
trace. ``TRACING_EXPORTER_FACTORY`` (a dotted path, for tests) names a callable
returning a span exporter, used instead of OTLP.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings

_configured = False


def wanted() -> bool:
    return bool(
        settings.OTEL_EXPORTER_OTLP_ENDPOINT or getattr(settings, "TRACING_EXPORTER_FACTORY", "")
    )


def _exporter() -> Any:
    factory = getattr(settings, "TRACING_EXPORTER_FACTORY", "")
    if factory:
        from django.utils.module_loading import import_string

        return import_string(factory)()
    # The exporters read OTEL_EXPORTER_OTLP_ENDPOINT (and headers, timeouts) themselves.
    os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", settings.OTEL_EXPORTER_OTLP_ENDPOINT)
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def setup(service: str) -> bool:
    """Set tracing up in this process if it is wanted (once); returns whether it is on."""
    global _configured
    if _configured or not wanted():
        return _configured
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", "users-service")
    provider = TracerProvider(
        resource=Resource.create({"service.name": name, "service.instance.role": service})
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    DjangoInstrumentor().instrument()
    CeleryInstrumentor().instrument()
    PsycopgInstrumentor().instrument(enable_commenter=False)
    RedisInstrumentor().instrument()
    _configured = True
    return True


def flush() -> None:
    """Export what is buffered (a worker process about to exit)."""
    if _configured:
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()
