"""What a subscriber batch tells the logs and the traces.

While a batch is handled, its events' correlation id (the one they share, else the
first's) and positions are bound to the log context, so every line written by the
subscriber carries them; the batch runs in a span continuing the trace of its first
event and linked to the others'. Once committed, a batch that did work writes one line
with every correlation id it served, so a search for one conversation finds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import structlog

from eventstore import tracing
from eventstore.reads import RecordedEvent
from eventstore.subscribers import Partition

logger = structlog.stdlib.get_logger("eventstore.subscriptions")
# A batch line names at most this many conversations (a rebuild's batches are large).
MAX_CORRELATION_IDS = 50


def correlation_ids(events: Sequence[RecordedEvent]) -> list[str]:
    found = dict.fromkeys(
        str(e.metadata["correlation_id"]) for e in events if e.metadata.get("correlation_id")
    )
    return list(found)[:MAX_CORRELATION_IDS]


@contextlib.contextmanager
def observed_batch(partition: Partition, events: Sequence[RecordedEvent]) -> Iterator[None]:
    if not events:
        yield
        return
    ids = correlation_ids(events)
    with (
        structlog.contextvars.bound_contextvars(
            subscriber=partition.name,
            partition=partition.number,
            correlation_id=ids[0] if ids else None,
            event_position=events[0].position,
        ),
        tracing.span(
            f"subscriber {partition.name}",
            parent=events[0].metadata,
            links=(e.metadata for e in events[1:]),
            subscriber=partition.name,
            partition=partition.number,
            events=len(events),
        ),
    ):
        yield


def log_batch(
    partition: Partition, events: Sequence[RecordedEvent], handled: int, parked: int
) -> None:
    ids = correlation_ids(events)
    logger.info(
        "subscriber batch",
        subscriber=partition.name,
        partition=partition.number,
        events=handled,
        parked=parked or None,
        first_position=events[0].position,
        event_position=events[-1].position,
        correlation_id=ids[0] if len(ids) == 1 else None,
        correlation_ids=ids,
    )
