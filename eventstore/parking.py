"""Parked streams: an event a subscriber cannot decode or handle stops its stream only.

The subscriber sets the event aside with every later event of its stream, for itself
alone, and goes on with every other stream. A parked stream is retried automatically
with backoff (``AUTO_RETRIES`` times), then waits for an operator, who retries it after
a fix or skips its first event with a reason. Retrying handles the waiting events, in
order, up to the partition's checkpoint; the events after the checkpoint come through
the feed as usual. Everything here runs inside the partition's batch transaction, under
its lock (the caller holds it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError, connections, transaction
from django.utils import timezone

from eventstore import reads
from eventstore.cursor import Cursor
from eventstore.models import ParkedStream, SkippedEvent
from eventstore.reads import RecordedEvent, Undecodable
from eventstore.subscribers import Partition, Subscriber

logger = logging.getLogger(__name__)

AUTO_RETRIES = 5
MAX_BACKOFF_SECONDS = 300
# Errors of the database connection or of the task itself, not of the event: they stop
# the batch (it is redone later), never park a stream.
TRANSIENT = (OperationalError, InterfaceError, SoftTimeLimitExceeded)

Parks = dict[str, tuple[RecordedEvent, str]]


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2**attempts, MAX_BACKOFF_SECONDS))


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def handle(subscriber: Subscriber, events: Sequence[RecordedEvent], parks: Parks) -> int:
    """Handle ``events`` one by one, each in a savepoint; an event that cannot be decoded
    or handled parks its stream in ``parks`` (later events of a parked stream wait).
    Returns how many were handled."""
    handled = 0
    for event in events:
        if event.stream_id in parks:
            continue
        if isinstance(event.data, Undecodable):
            parks[event.stream_id] = (event, event.data.error)
            continue
        try:
            with transaction.atomic():
                subscriber.handle_batch([event])
        except TRANSIENT:
            raise
        except Exception as exc:
            parks[event.stream_id] = (event, error_text(exc))
        else:
            handled += 1
    return handled


def park(partition: Partition, parks: Parks, using: str = "default") -> None:
    """Record newly parked streams (in the batch's transaction)."""
    if not parks:
        return
    now = timezone.now()
    ParkedStream.objects.using(using).bulk_create(
        [
            ParkedStream(
                subscriber=partition.name,
                partition=partition.number,
                stream_id=stream_id,
                cursor_transaction_id=event.cursor.transaction_id,
                cursor_position=event.cursor.position,
                event_id=event.event_id,
                event_type=event.event_type,
                version=event.version,
                error=error,
                attempts=1,
                retry_at=now + backoff(1),
                parked_at=now,
                updated_at=now,
            )
            for stream_id, (event, error) in parks.items()
        ]
    )
    for stream_id, (event, error) in parks.items():
        logger.error(
            "%s parked stream %s at event %s (%s, version %s, position %s): %s",
            partition, stream_id, event.event_id, event.event_type, event.version,
            event.position, error,
        )  # fmt: skip


def retry(
    partition: Partition, parked: ParkedStream, until: Cursor, using: str = "default"
) -> bool:
    """Handle a parked stream's waiting events up to ``until`` (the checkpoint); True if
    it is no longer parked. On failure the stream stays parked at the failing event."""
    subscriber = partition.subscriber
    skipped = set(
        SkippedEvent.objects.using(using)
        .filter(subscriber=partition.name, stream_id=parked.stream_id)
        .values_list("event_id", flat=True)
    )
    waiting = [
        event
        for event in reads.read_waiting(
            parked.stream_id,
            subscriber.event_types,
            Cursor(parked.cursor_transaction_id, parked.cursor_position),
            until,
            using=using,
        )
        if event.event_id not in skipped
    ]
    parks: Parks = {}
    handle(subscriber, waiting, parks)
    if not parks:
        ParkedStream.objects.using(using).filter(pk=parked.pk).delete()
        logger.warning("%s: stream %s is handled again", partition, parked.stream_id)
        return True
    event, error = parks[parked.stream_id]
    moved = event.event_id != parked.event_id
    parked.attempts = 1 if moved else parked.attempts + 1
    parked.retry_at = (
        timezone.now() + backoff(parked.attempts) if parked.attempts <= AUTO_RETRIES else None
    )
    _stay_at(parked, event, error)
    if parked.retry_at is None:
        logger.error(
            "%s: stream %s still fails at event %s after %s tries; it waits for an operator: %s",
            partition, parked.stream_id, event.event_id, parked.attempts, error,
        )  # fmt: skip
    return False


def _stay_at(parked: ParkedStream, event: RecordedEvent, error: str) -> None:
    parked.cursor_transaction_id = event.cursor.transaction_id
    parked.cursor_position = event.cursor.position
    parked.event_id, parked.event_type, parked.version = (
        event.event_id,
        event.event_type,
        event.version,
    )
    parked.error = error
    parked.updated_at = timezone.now()
    parked.save()


def retry_due(partition: Partition, until: Cursor, using: str = "default", limit: int = 10) -> None:
    """The automatic retries whose time has come (at the start of a batch)."""
    due = ParkedStream.objects.using(using).filter(
        subscriber=partition.name, partition=partition.number, retry_at__lte=timezone.now()
    )[:limit]
    for parked in due:
        retry(partition, parked, until, using)


def skip_first(
    partition: Partition,
    parked: ParkedStream,
    until: Cursor,
    *,
    reason: str,
    actor: str,
    using: str = "default",
) -> bool:
    """Skip the first waiting event (recorded: who, when, why), then retry the rest;
    True if the stream is no longer parked."""
    SkippedEvent.objects.using(using).get_or_create(
        subscriber=partition.name,
        event_id=parked.event_id,
        defaults={
            "stream_id": parked.stream_id,
            "event_type": parked.event_type,
            "version": parked.version,
            "position": parked.cursor_position,
            "error": parked.error,
            "reason": reason,
            "skipped_by": actor,
        },
    )
    logger.warning(
        "%s: %s skipped event %s of stream %s: %s",
        partition, actor, parked.event_id, parked.stream_id, reason,
    )  # fmt: skip
    parked.attempts = 0
    return retry(partition, parked, until, using)


def waiting_counts(
    subscriber: Subscriber, streams: list[ParkedStream], using: str = "default"
) -> dict[str, int]:
    """How many events wait in each parked stream, its first one included."""
    if not streams:
        return {}
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT p.stream_id, (SELECT count(*) FROM events e WHERE e.stream_id = p.stream_id "
            "AND e.event_type = ANY(%s) "
            "AND (e.transaction_id, e.position) >= (p.cursor_transaction_id, p.cursor_position)) "
            "FROM parked_streams p WHERE p.subscriber = %s AND p.stream_id = ANY(%s)",
            [subscriber.event_types, subscriber.name, [s.stream_id for s in streams]],
        )
        return dict(cursor.fetchall())


def describe(parked: ParkedStream, waiting: int | None = None) -> dict[str, Any]:
    """A parked stream as status reports show it."""
    return {
        "stream_id": parked.stream_id,
        "partition": parked.partition,
        "event_id": str(parked.event_id),
        "event_type": parked.event_type,
        "version": parked.version,
        "position": parked.cursor_position,
        "error": parked.error,
        "attempts": parked.attempts,
        "retry_at": parked.retry_at,
        "parked_at": parked.parked_at,
        "waiting_events": waiting,
    }
