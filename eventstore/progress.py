"""How far subscribers are: lag, pending events, and read-your-writes waits."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import connections

from eventstore.subscribers import Partition, Subscriber

# Events in the feed after checkpoint ``c`` (of every type), and the age of the oldest of
# them, in its partition; ``c`` is a row of ``checkpoints``.
_AFTER = (
    "FROM events e WHERE (e.transaction_id, e.position) > (c.cursor_transaction_id, "
    "c.cursor_position) AND (c.partitions = 1 OR mod(e.bucket, c.partitions) = c.partition)"
)
LAG_SQL = f"(SELECT count(*) {_AFTER})"
LAG_SECONDS_SQL = f"(SELECT extract(epoch FROM now() - min(e.recorded_at))::float {_AFTER})"


def lag(partition: Partition, using: str = "default") -> tuple[int, float | None]:
    """Events in the partition's feed after its checkpoint, and the age in seconds of the
    oldest of them (None when there are none)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT {LAG_SQL}, {LAG_SECONDS_SQL} FROM checkpoints c "
            "WHERE c.name = %s AND c.partition = %s",
            [partition.name, partition.number],
        )
        row = cursor.fetchone()
    if row is None:
        raise LookupError(f"{partition} has no checkpoint yet")
    return row[0], row[1]


def has_pending(partition: Partition, using: str = "default") -> bool:
    """Whether events for the partition exist past its checkpoint, readable or not yet.

    After a catch-up, such events sit above the horizon: a transaction that began before
    them is still open somewhere. They are not lost; this tells the caller to look again.
    """
    buckets = partition.buckets
    bucket_filter = "" if buckets is None else "AND e.bucket = ANY(%s)"
    params: list[Any] = [partition.subscriber.event_types]
    if buckets is not None:
        params.append(list(buckets))
    params += [partition.name, partition.number]
    # A lateral LIMIT 1 in feed order: the planner walks the feed index from the
    # checkpoint, instead of planning for an unknown cursor and reading the whole table.
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM checkpoints c, LATERAL ("
            "  SELECT 1 FROM events e"
            "   WHERE (e.transaction_id, e.position) > (c.cursor_transaction_id, c.cursor_position)"
            f"    AND e.event_type = ANY(%s) {bucket_filter}"
            "   ORDER BY e.transaction_id, e.position LIMIT 1) AS pending"
            " WHERE c.name = %s AND c.partition = %s)",
            params,
        )
        return cursor.fetchone()[0]


PROCESSED, PENDING, PARKED, STALLED = "processed", "pending", "parked", "stalled"


def state_of(subscriber: Subscriber, position: int, using: str = "default") -> str:
    """Where ``subscriber`` is with the event at global ``position``: processed, pending,
    parked (its stream waits for an operator or a retry), or stalled (the event is older
    than ``SUBSCRIBER_STALL_SECONDS`` and its partition has not moved for as long).

    Raises LookupError when no event has that position: waiting for it would be in vain
    (positions are handed out only to committed events, or skipped for good).
    """
    stall = settings.SUBSCRIBER_STALL_SECONDS
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT (c.cursor_transaction_id, c.cursor_position) >= (e.transaction_id, e.position),"
            " EXISTS (SELECT 1 FROM parked_streams p WHERE p.subscriber = %s"
            "   AND p.stream_id = e.stream_id AND (p.cursor_transaction_id, p.cursor_position)"
            "   <= (e.transaction_id, e.position)),"
            " e.recorded_at < now() - make_interval(secs => %s)"
            " AND c.updated_at < now() - make_interval(secs => %s) "
            "FROM events e LEFT JOIN checkpoints c ON c.name = %s "
            "  AND c.partition = mod(e.bucket, c.partitions) "
            "WHERE e.position = %s",
            [subscriber.name, stall, stall, subscriber.name, position],
        )
        row = cursor.fetchone()
    if row is None:
        raise LookupError(f"no event has position {position}")
    processed, parked, stalled = row
    if parked:
        return PARKED
    if processed:
        return PROCESSED
    return STALLED if stalled else PENDING


def wait_until_processed(
    subscriber: Subscriber, position: int, *, timeout: float = 2.0, using: str = "default"
) -> bool:
    """Read-your-writes: wait (bounded) until ``subscriber`` has processed ``position``.

    Answers False at once when that event's stream is parked or its partition stalled:
    waiting would only hold the caller. Raises LookupError at once for a position no
    event has.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        state = state_of(subscriber, position, using)
        if state == PROCESSED:
            return True
        if state in (PARKED, STALLED) or time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
