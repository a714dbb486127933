"""Trace context through the events: stored at append, continued where they are handled.

Tracing is on in a process when a tracer provider was set up (``config.tracing`` does,
when configured); otherwise these helpers do nothing and import nothing. An event's
metadata keeps the W3C ``traceparent`` (and ``tracestate``) of the span that appended
it, so the subscriber batch and the saga step that handle it continue that trace.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

TRACE_KEYS = ("traceparent", "tracestate")


def enabled() -> bool:
    """Whether a tracer provider was set in this process (other libraries, redis-py for
    one, may import OpenTelemetry's API without anyone tracing)."""
    trace = sys.modules.get("opentelemetry.trace")
    return trace is not None and not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    )


def carrier() -> dict[str, str]:
    """The current span's W3C trace context, for an event's metadata ({} when off)."""
    if not enabled():
        return {}
    from opentelemetry import propagate

    found: dict[str, str] = {}
    propagate.inject(found)
    return {key: found[key] for key in TRACE_KEYS if key in found}


@contextlib.contextmanager
def span(
    name: str,
    parent: Mapping[str, Any] | None = None,
    links: Iterable[Mapping[str, Any]] = (),
    **attributes: Any,
) -> Iterator[None]:
    """A span continuing the trace ``parent`` (a metadata mapping holding ``traceparent``),
    linked to the traces of ``links``; nothing when tracing is off."""
    if not enabled():
        yield
        return
    from opentelemetry import propagate, trace

    context = propagate.extract(dict(parent)) if parent and "traceparent" in parent else None
    span_links = []
    for other in links:
        if "traceparent" in other:
            linked = trace.get_current_span(propagate.extract(dict(other))).get_span_context()
            if linked.is_valid:
                span_links.append(trace.Link(linked))
    tracer = trace.get_tracer("eventstore")
    clean = {key: value for key, value in attributes.items() if value is not None}
    with tracer.start_as_current_span(name, context=context, links=span_links, attributes=clean):
        yield
