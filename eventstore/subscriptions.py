"""The engine that moves subscribers forward, partition by partition.

A partition reads its gap-safe feed after its checkpoint, one batch per transaction,
and its checkpoint moves in the same transaction as whatever it wrote: a batch is done
exactly once or not at all, however often it is triggered and whoever dies mid-batch.
A transaction-scoped advisory lock keeps each partition in one place at a time, so up
to N workers on any machines move a subscriber of N partitions together; a wake-up that
finds a partition busy leaves a flag the running one checks before it stops. An event
that cannot be decoded or handled parks its stream (:mod:`eventstore.parking`); the
partition goes on with every other stream.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass

from django.db import connections, transaction
from django.utils import timezone

from eventstore import metrics, parking, reads
from eventstore.cursor import Cursor
from eventstore.models import Checkpoint
from eventstore.observe import log_batch, observed_batch
from eventstore.parking import TRANSIENT
from eventstore.reads import RecordedEvent, Undecodable
from eventstore.subscribers import Partition, Subscriber, all_subscribers, partitions_of

logger = logging.getLogger(__name__)

_LOCK_NAMESPACE = 0x5E5  # first key of pg_advisory_xact_lock(int, int) for partitions


class PartitionCountChanged(RuntimeError):
    """The subscriber's checkpoints were made for another partition count."""

    def __init__(self, name: str, stored: int, configured: int) -> None:
        super().__init__(
            f"subscriber {name!r} has checkpoints for {stored} partition(s) but is configured "
            f"for {configured}: run 'manage.py repartition {name}' (or replay it)"
        )
        self.stored, self.configured = stored, configured


@dataclass(frozen=True)
class BatchOutcome:
    """What one batch did."""

    processed: int = 0
    parked: int = 0
    busy: bool = False
    more: bool = False


@dataclass(frozen=True)
class CatchUpResult:
    """How far a catch-up went and why it stopped."""

    processed: int
    batches: int
    stopped: str  # caught_up | busy | time_budget | partition_count_changed
    parked: int = 0  # streams it parked on the way


class _BatchFailed(Exception):
    pass


class _NoCheckpoint(Exception):
    pass


def lock_key(name: str, partition: int = 0) -> int:
    return zlib.crc32(f"{name}:{partition}".encode()) - 2**31


def _try_lock(partition: Partition, using: str) -> bool:
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s, %s), set_config('synchronous_commit', "
            "CASE WHEN %s THEN current_setting('synchronous_commit') ELSE 'off' END, true)",
            [_LOCK_NAMESPACE, lock_key(partition.name, partition.number),
             partition.subscriber.synchronous_commit],
        )  # fmt: skip
        return cursor.fetchone()[0]


def lock(name: str, partition: int = 0, using: str = "default") -> None:
    """Wait for a partition's lock, held until the current transaction ends."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_NAMESPACE, lock_key(name, partition)]
        )


def ensure_checkpoints(subscriber: Subscriber, using: str = "default") -> None:
    """Make the checkpoint rows of a subscriber's partitions on first use; refuse a
    subscriber whose stored rows were made for another partition count."""
    count = subscriber.partition_count
    stored = set(
        Checkpoint.objects.using(using)
        .filter(name=subscriber.name)
        .values_list("partitions", flat=True)
    )
    if stored - {count}:
        raise PartitionCountChanged(subscriber.name, max(stored - {count}), count)
    Checkpoint.objects.using(using).bulk_create(
        [
            Checkpoint(name=subscriber.name, partition=p, partitions=count, kind=subscriber.kind)
            for p in range(count)
        ],
        ignore_conflicts=True,
    )


def _read_checkpoint(partition: Partition, using: str) -> tuple[Cursor, list[str], bool]:
    """The partition's cursor, its parked streams, and whether a parked stream is due for
    an automatic retry: one round trip, as this runs for every batch."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT c.cursor_transaction_id::text, c.cursor_position, c.partitions, "
            "ARRAY(SELECT p.stream_id FROM parked_streams p WHERE p.subscriber = c.name "
            "      AND p.partition = c.partition), "
            "EXISTS(SELECT 1 FROM parked_streams p WHERE p.subscriber = c.name "
            "       AND p.partition = c.partition AND p.retry_at <= now()) "
            "FROM checkpoints c WHERE c.name = %s AND c.partition = %s",
            [partition.name, partition.number],
        )
        row = cursor.fetchone()
    if row is None:
        raise _NoCheckpoint
    if row[2] != partition.count:
        raise PartitionCountChanged(partition.name, row[2], partition.count)
    return Cursor(int(row[0]), row[1]), row[3], row[4]


def advance(
    partition: Partition,
    cursor: Cursor,
    processed: int,
    last: RecordedEvent | None,
    using: str,
) -> None:
    """Move the checkpoint (inside the batch's transaction)."""
    with connections[using].cursor() as db:
        db.execute(
            "UPDATE checkpoints SET cursor_transaction_id = %s::xid8, cursor_position = %s, "
            "updated_at = %s, events_processed = events_processed + %s, "
            "last_event_at = COALESCE(%s, last_event_at) WHERE name = %s AND partition = %s",
            [str(cursor.transaction_id), cursor.position, timezone.now(), processed,
             last.recorded_at if last else None, partition.name, partition.number],
        )  # fmt: skip


def _handle(
    subscriber: Subscriber, events: list[RecordedEvent], careful: bool
) -> tuple[int, parking.Parks]:
    """Handle a page; returns (handled, parked). The fast way hands every decodable event
    to ``handle_batch`` at once and raises :class:`_BatchFailed` if it fails; the careful
    way (a redo of that batch) finds the events that fail, one by one."""
    parks: parking.Parks = {}
    if careful:
        return parking.handle(subscriber, events, parks), parks
    ready = []
    for event in events:
        if event.stream_id in parks:
            continue
        if isinstance(event.data, Undecodable):
            parks[event.stream_id] = (event, event.data.error)
            continue
        ready.append(event)
    if ready:
        try:
            subscriber.handle_batch(ready)
        except TRANSIENT:
            raise
        except Exception as exc:
            raise _BatchFailed from exc
    return len(ready), parks


def _run_batch(
    partition: Partition, limit: int, careful: bool, using: str, until: Cursor | None = None
) -> BatchOutcome:
    with transaction.atomic(using=using):
        if not _try_lock(partition, using):
            return BatchOutcome(busy=True)
        position, parked, retry_due = _read_checkpoint(partition, using)
        if retry_due:
            parking.retry_due(partition, position, using)
            position, parked, _ = _read_checkpoint(partition, using)
        page = reads.read_all(
            position,
            limit=limit,
            event_types=partition.subscriber.event_types,
            buckets=partition.buckets,
            exclude_streams=parked,
            until=until,
            keep_undecodable=True,
            using=using,
        )
        with observed_batch(partition, page.events):
            processed, parks = _handle(partition.subscriber, page.events, careful)
        parking.park(partition, parks, using)
        if page.events or page.next_cursor != position:
            last = page.events[-1] if page.events else None
            advance(partition, page.next_cursor, processed, last, using)
    if page.events:
        log_batch(partition, page.events, processed, len(parks))
    return BatchOutcome(processed=processed, parked=len(parks), more=page.is_full)


def run_batch(
    partition: Partition, using: str = "default", until: Cursor | None = None
) -> BatchOutcome:
    """Process at most one batch of a partition.

    The checkpoint rows are made on first use (committed on their own, before the batch,
    so that a wake flag has a row to go to). A batch whose handler fails is rolled back
    whole, then redone event by event, so that only the failing events' streams park.
    """
    careful = False
    while True:
        try:
            outcome = _run_batch(partition, partition.subscriber.batch_size, careful, using, until)
        except _NoCheckpoint:
            ensure_checkpoints(partition.subscriber, using)
        except _BatchFailed:
            metrics.subscriber_error(partition.name, partition.number, "batch")
            careful = True
        else:
            metrics.subscriber_error(partition.name, partition.number, "parked", outcome.parked)
            return outcome


def _take_wake_flag(partition: Partition, using: str) -> bool:
    return bool(
        Checkpoint.objects.using(using)
        .filter(name=partition.name, partition=partition.number, wake_requested=True)
        .update(wake_requested=False)
    )


def request_wake(partition: Partition, using: str = "default") -> None:
    Checkpoint.objects.using(using).filter(name=partition.name, partition=partition.number).update(
        wake_requested=True
    )


def catch_up_partition(
    partition: Partition, *, time_budget: float | None = None, using: str = "default"
) -> CatchUpResult:
    """Run a partition's batches until caught up with its feed (or busy, out of time)."""
    processed = batches = parked = 0
    flagged = False
    deadline = None if time_budget is None else time.monotonic() + time_budget

    def result(stopped: str) -> CatchUpResult:
        return CatchUpResult(processed, batches, stopped, parked)

    while True:
        try:
            outcome = run_batch(partition, using)
        except PartitionCountChanged as exc:
            logger.error("%s", exc)
            return result("partition_count_changed")
        processed += outcome.processed
        parked += outcome.parked
        batches += 1
        if outcome.busy:
            if flagged:
                return result("busy")
            # Leave a flag, then try once more: the holder may have checked the flag and
            # left just before we set it. If it is still there, it will see the flag.
            request_wake(partition, using)
            flagged = True
            continue
        flagged = False
        if deadline is not None and time.monotonic() > deadline:
            return result("time_budget")
        if outcome.more:
            continue
        # The lock is released now; a wake-up that came while we held it set the flag.
        if _take_wake_flag(partition, using):
            continue
        return result("caught_up")


def catch_up(
    subscriber: Subscriber,
    *,
    partition: int | None = None,
    time_budget: float | None = None,
    using: str = "default",
) -> CatchUpResult:
    """Catch one partition up, or (``partition=None``) each of them in turn."""
    chosen = partitions_of(subscriber)
    if partition is not None:
        chosen = [p for p in chosen if p.number == partition]
        if not chosen:
            raise LookupError(f"{subscriber.name} has no partition {partition}")
    results = [catch_up_partition(p, time_budget=time_budget, using=using) for p in chosen]
    stopped = next((r.stopped for r in results if r.stopped != "caught_up"), "caught_up")
    return CatchUpResult(
        sum(r.processed for r in results),
        sum(r.batches for r in results),
        stopped,
        sum(r.parked for r in results),
    )


def catch_up_all(
    *, time_budget: float | None = None, using: str = "default"
) -> dict[str, CatchUpResult]:
    return {s.name: catch_up(s, time_budget=time_budget, using=using) for s in all_subscribers()}


def reset_checkpoints(
    subscriber: Subscriber, cursor: Cursor, processed: int, using: str = "default"
) -> None:
    """Put every partition at ``cursor``, for the configured partition count (inside the
    transaction of a replay's swap or a repartition, which hold every partition's lock)."""
    count = subscriber.partition_count
    Checkpoint.objects.using(using).filter(name=subscriber.name).delete()
    now = timezone.now()
    Checkpoint.objects.using(using).bulk_create(
        Checkpoint(
            name=subscriber.name,
            partition=p,
            partitions=count,
            kind=subscriber.kind,
            cursor_transaction_id=cursor.transaction_id,
            cursor_position=cursor.position,
            events_processed=processed if p == 0 else 0,
            updated_at=now,
        )
        for p in range(count)
    )
