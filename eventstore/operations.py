"""What operators do to subscribers: retry or skip parked streams, change partition counts.

Each operation takes the partition locks the engine takes, so it never races a batch.
The admin and the management commands call these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.db import connections, transaction

from eventstore import parking, reads, subscriptions
from eventstore.cursor import Cursor
from eventstore.models import Checkpoint, ParkedStream
from eventstore.partitions import partition_of
from eventstore.subscribers import Partition, Subscriber, get, partitions_of

logger = logging.getLogger(__name__)

LOCK_TIMEOUT = "10s"  # an operator waits this long for a partition's running batch


def _locked_partition(subscriber: Subscriber, number: int, using: str) -> tuple[Partition, Cursor]:
    """Inside a transaction: wait for a partition's lock; its checkpoint cursor."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [LOCK_TIMEOUT])
    subscriptions.lock(subscriber.name, number, using)
    row = (
        Checkpoint.objects.using(using)
        .filter(name=subscriber.name, partition=number)
        .values_list("partitions", "cursor_transaction_id", "cursor_position")
        .first()
    )
    if row is None:
        raise LookupError(f"{subscriber.name} has no checkpoint for partition {number}")
    return Partition(subscriber, number, row[0]), Cursor(row[1], row[2])


def _on_parked(
    name: str,
    stream_id: str,
    action: Callable[[Partition, ParkedStream, Cursor], bool],
    using: str,
) -> bool:
    subscriber = get(name)
    with transaction.atomic(using=using):
        parked = ParkedStream.objects.using(using).filter(subscriber=name, stream_id=stream_id)
        first = parked.first()
        if first is None:
            raise LookupError(f"{name} has not parked stream {stream_id!r}")
        partition, cursor = _locked_partition(subscriber, first.partition, using)
        first = parked.select_for_update().first()
        if first is None:  # handled meanwhile, by an automatic retry
            return True
        return action(partition, first, cursor)


def retry_parked(name: str, stream_id: str, using: str = "default") -> bool:
    """Handle a parked stream's waiting events now; True if it is no longer parked."""
    return _on_parked(
        name, stream_id, lambda p, parked, cursor: parking.retry(p, parked, cursor, using), using
    )


def skip_parked(
    name: str, stream_id: str, *, reason: str, actor: str, using: str = "default"
) -> bool:
    """Skip a parked stream's first waiting event (recorded), then retry the rest; True
    if the stream is no longer parked."""
    if not reason.strip():
        raise ValueError("skipping an event needs a reason")
    return _on_parked(
        name,
        stream_id,
        lambda p, parked, cursor: parking.skip_first(
            p, parked, cursor, reason=reason.strip(), actor=actor, using=using
        ),
        using,
    )


def retry_all_parked(name: str, using: str = "default") -> tuple[int, int]:
    """Retry every stream ``name`` has parked; (no longer parked, still parked)."""
    streams = (
        ParkedStream.objects.using(using)
        .filter(subscriber=name)
        .values_list("stream_id", flat=True)
    )
    done = sum(retry_parked(name, stream_id, using) for stream_id in list(streams))
    return done, ParkedStream.objects.using(using).filter(subscriber=name).count()


def repartition(
    subscriber: Subscriber,
    *,
    progress: Callable[[str], None] | None = None,
    using: str = "default",
) -> tuple[int, int]:
    """Move a subscriber's checkpoints to its configured partition count; (from, to).

    Each old partition is caught up to one common point (the feed's horizon when this
    starts), under its own lock, with its batches' effects; then, in one transaction
    holding every old and new partition's lock, the old rows are replaced by new ones at
    that point, and the parked streams move to their new partitions. No event is
    handled twice or skipped. Workers still running the old count must be stopped
    first: a worker of the new count leaves a subscriber alone until this is done.
    """
    count = subscriber.partition_count
    stored = set(
        Checkpoint.objects.using(using)
        .filter(name=subscriber.name)
        .values_list("partitions", flat=True)
    )
    if not stored:
        subscriptions.ensure_checkpoints(subscriber, using)
        return count, count
    if len(stored) > 1:
        raise RuntimeError(f"{subscriber.name} has checkpoints for several counts: {stored}")
    old = stored.pop()
    if old == count:
        return old, count
    target = reads.horizon(using=using)
    for partition in partitions_of(subscriber, old):
        if progress:
            progress(f"catching {partition} up to the common point")
        while True:
            outcome = subscriptions.run_batch(partition, using, until=target)
            if outcome.busy:
                time.sleep(0.1)  # a batch of a worker still running the old count
                continue
            if not outcome.more:
                break
    with transaction.atomic(using=using):
        for number in range(max(old, count)):
            subscriptions.lock(subscriber.name, number, using)
        rows = Checkpoint.objects.using(using).filter(name=subscriber.name)
        cursors = {Cursor(r.cursor_transaction_id, r.cursor_position) for r in rows}
        if cursors != {target}:
            raise RuntimeError(
                f"{subscriber.name}'s partitions moved while it was repartitioned: stop the "
                "workers that still run the old partition count, then run this again"
            )
        processed = sum(r.events_processed for r in rows)
        subscriptions.reset_checkpoints(subscriber, target, processed, using)
        for parked in ParkedStream.objects.using(using).filter(subscriber=subscriber.name):
            parked.partition = partition_of(parked.stream_id, count)
            parked.save(update_fields=["partition"])
    logger.warning("%s repartitioned from %s to %s partitions", subscriber.name, old, count)
    return old, count
