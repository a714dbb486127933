"""What a saga step tells the logs and the traces.

A step runs with the correlation id of the conversation that started its instance bound
to the log context, in a span continuing that conversation's trace (its instance keeps
the trace context of the event that opened it), and writes one line when it is done.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import structlog

from eventstore import tracing
from sagas.models import SagaInstance

logger = structlog.stdlib.get_logger("sagas.runner")


def trace_context(metadata: dict) -> dict[str, str]:
    """The trace context an instance keeps from the event that opened it."""
    return {key: metadata[key] for key in tracing.TRACE_KEYS if key in metadata}


@contextlib.contextmanager
def observed_step(instance: SagaInstance, saga: str) -> Iterator[Callable[[str], str]]:
    """Bind the step's context; the caller reports the outcome, which is logged."""
    step, started = instance.step, time.perf_counter()
    data = instance.data or {}

    def report(outcome: str) -> str:
        duration = round((time.perf_counter() - started) * 1000, 2)
        logger.info("saga step", outcome=outcome, duration_ms=duration)
        return outcome

    with (
        structlog.contextvars.bound_contextvars(
            correlation_id=data.get("correlation_id"),
            saga=saga,
            saga_instance=instance.pk,
            step=step,
        ),
        tracing.span(f"saga step {saga}.{step}", parent=data, saga=saga, step=step),
    ):
        yield report
