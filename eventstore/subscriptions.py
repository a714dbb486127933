"""Subscribers (projections and process managers) and the engine that moves them.

A subscriber reads the gap-safe feed after its checkpoint, one batch per transaction,
and its checkpoint moves in the same transaction as whatever it wrote: a batch is done
exactly once or not at all, however often it is triggered and whoever dies mid-batch.
A transaction-scoped advisory lock keeps each subscriber in one place at a time; a
wake-up that finds it busy leaves a flag the running one checks before it stops.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from django.db import connections, transaction
from django.utils import timezone

from eventstore import store
from eventstore.cursor import Cursor
from eventstore.models import Checkpoint
from eventstore.store import RecordedEvent
from eventstore.types import registry

logger = logging.getLogger(__name__)

_LOCK_NAMESPACE = 0x5E5  # first key of pg_advisory_xact_lock(int, int) for subscribers
MAX_BACKOFF_SECONDS = 300


def handles(*event_classes: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a subscriber method as the handler of these event classes."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        method._handles = event_classes  # type: ignore[attr-defined]
        return method

    return mark


class Subscriber:
    """Something that reacts to stored events in feed order; subclass a kind below."""

    name: ClassVar[str]
    kind: ClassVar[str] = "subscriber"
    batch_size: ClassVar[int] = 500
    # A batch commits without waiting for its WAL to reach the disk. Safe while a batch
    # only writes to this database: a crash can lose its last few hundred milliseconds
    # of batches, but each with its checkpoint, so they are simply redone; and anything
    # that builds on them and commits durably flushes them first (the WAL is one
    # sequence). A subscriber with effects outside the database in its batch sets True.
    synchronous_commit: ClassVar[bool] = False
    _handlers: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attribute, value in vars(klass).items():
                for event_class in getattr(value, "_handles", ()):
                    handlers[registry.for_event_class(event_class).name] = attribute
        cls._handlers = handlers

    @property
    def event_types(self) -> list[str]:
        return sorted(self._handlers)

    def dispatch(self, event: RecordedEvent, *args: Any) -> None:
        """Call the ``@handles`` method for ``event``'s type with ``args`` then the event.

        The one way events reach handlers: the default :meth:`handle_batch` passes no
        extra arguments; a subscriber that folds a batch in memory passes its state.
        """
        getattr(self, self._handlers[event.event_type])(*args, event)

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        """Handle a batch inside its transaction; override to fold or write in bulk."""
        for event in events:
            self.dispatch(event)


class Projection(Subscriber):
    """Writes read models. ``read_models`` are the tables a replay rebuilds aside."""

    kind = "projection"
    read_models: ClassVar[list[type]] = []


class ProcessManager(Subscriber):
    """Reacts to events by issuing commands (a saga). Never replayed."""

    kind = "process_manager"


# --- registry --------------------------------------------------------------------

_subscribers: dict[str, Subscriber] = {}


def register(subscriber: Subscriber) -> Subscriber:
    """Register a subscriber (from its app's ``AppConfig.ready()``)."""
    existing = _subscribers.get(subscriber.name)
    if existing is not None and type(existing) is not type(subscriber):
        raise ValueError(f"subscriber name {subscriber.name!r} is already taken")
    _subscribers[subscriber.name] = subscriber
    return subscriber


def get(name: str) -> Subscriber:
    try:
        return _subscribers[name]
    except KeyError:
        known = ", ".join(sorted(_subscribers)) or "none"
        raise LookupError(f"no subscriber named {name!r} (registered: {known})") from None


def all_subscribers() -> list[Subscriber]:
    return [_subscribers[name] for name in sorted(_subscribers)]


def interested_in(event_types: Iterable[str]) -> list[Subscriber]:
    wanted = set(event_types)
    return [s for s in all_subscribers() if wanted.intersection(s._handlers)]


# --- the engine ------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOutcome:
    """What one batch did."""

    processed: int = 0
    busy: bool = False
    backing_off: bool = False
    failed: bool = False
    more: bool = False


class _HandlerFailed(Exception):
    def __init__(self, index: int, event: RecordedEvent, error: Exception) -> None:
        self.index, self.event, self.error = index, event, error


def lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31


def _try_lock(name: str, using: str, synchronous_commit: bool = True) -> bool:
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s, %s), set_config('synchronous_commit', "
            "CASE WHEN %s THEN current_setting('synchronous_commit') ELSE 'off' END, true)",
            [_LOCK_NAMESPACE, lock_key(name), synchronous_commit],
        )
        return cursor.fetchone()[0]


def lock(name: str, using: str = "default") -> None:
    """Wait for the subscriber's lock, held until the current transaction ends."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_NAMESPACE, lock_key(name)])


def ensure_checkpoint(subscriber: Subscriber, using: str = "default") -> None:
    Checkpoint.objects.using(using).get_or_create(
        name=subscriber.name, defaults={"kind": subscriber.kind}
    )


def advance(
    name: str, cursor: Cursor, processed: int, last: RecordedEvent | None, using: str
) -> None:
    """Move the checkpoint (inside the batch's transaction) and clear any error."""
    now = timezone.now()
    with connections[using].cursor() as db:
        if processed:
            db.execute(
                "UPDATE checkpoints SET cursor_transaction_id = %s::xid8, cursor_position = %s, "
                "updated_at = %s, events_processed = events_processed + %s, "
                "last_event_at = %s, error = '', error_position = NULL, error_count = 0, "
                "retry_at = NULL WHERE name = %s",
                [str(cursor.transaction_id), cursor.position, now, processed,
                 last.recorded_at if last else None, name],
            )  # fmt: skip
        else:
            db.execute(
                "UPDATE checkpoints SET cursor_transaction_id = %s::xid8, cursor_position = %s, "
                "updated_at = %s WHERE name = %s",
                [str(cursor.transaction_id), cursor.position, now, name],
            )


def _run_batch(
    subscriber: Subscriber, limit: int, using: str, one_by_one: bool = False
) -> BatchOutcome:
    with transaction.atomic(using=using):
        if not _try_lock(subscriber.name, using, subscriber.synchronous_commit):
            return BatchOutcome(busy=True)
        position, retry_at = _read_checkpoint(subscriber, using)
        if retry_at and retry_at > timezone.now():
            return BatchOutcome(backing_off=True)
        page = store.read_all(
            position,
            limit=limit,
            event_types=subscriber.event_types,
            using=using,
        )
        events = page.events
        if one_by_one:  # find the event that fails; each one in a savepoint of its own
            for index, event in enumerate(events):
                try:
                    with transaction.atomic(using=using):
                        subscriber.handle_batch([event])
                except Exception as exc:
                    raise _HandlerFailed(index, event, exc) from exc
        elif events:
            try:
                subscriber.handle_batch(events)
            except Exception as exc:
                raise _BatchFailed from exc
        if events or page.next_cursor != position:
            last = events[-1] if events else None
            advance(subscriber.name, page.next_cursor, len(events), last, using)
        return BatchOutcome(processed=len(events), more=page.is_full)


class _NoCheckpoint(Exception):
    pass


def _read_checkpoint(subscriber: Subscriber, using: str) -> tuple[Cursor, Any]:
    """The subscriber's cursor and retry time. Plain SQL: this runs for every batch, and
    the ORM compiled the query anew each time."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT cursor_transaction_id::text, cursor_position, retry_at "
            "FROM checkpoints WHERE name = %s",
            [subscriber.name],
        )
        row = cursor.fetchone()
    if row is None:
        raise _NoCheckpoint
    return Cursor(int(row[0]), row[1]), row[2]


class _BatchFailed(Exception):
    pass


def reset_checkpoint(name: str, cursor: Cursor, processed: int, using: str = "default") -> None:
    """Put a checkpoint at ``cursor`` after a rebuild (inside the swap's transaction)."""
    Checkpoint.objects.using(using).filter(name=name).update(
        cursor_transaction_id=cursor.transaction_id,
        cursor_position=cursor.position,
        events_processed=processed,
        updated_at=timezone.now(),
        error="",
        error_position=None,
        error_count=0,
        retry_at=None,
    )


def _record_failure(subscriber: Subscriber, failure: _HandlerFailed, using: str) -> None:
    with transaction.atomic(using=using):
        lock(subscriber.name, using)
        checkpoint = Checkpoint.objects.using(using).select_for_update().get(name=subscriber.name)
        attempts = checkpoint.error_count + 1
        delay = min(2**attempts, MAX_BACKOFF_SECONDS)
        checkpoint.error = f"{type(failure.error).__name__}: {failure.error}"
        checkpoint.error_position = failure.event.position
        checkpoint.error_count = attempts
        checkpoint.retry_at = timezone.now() + timedelta(seconds=delay)
        checkpoint.updated_at = timezone.now()
        checkpoint.save(
            update_fields=["error", "error_position", "error_count", "retry_at", "updated_at"]
        )
    logger.error(
        "subscriber %s stopped at event %s (%s, position %s); retry %s in %ss",
        subscriber.name,
        failure.event.event_id,
        failure.event.event_type,
        failure.event.position,
        attempts,
        delay,
        exc_info=failure.error,
    )


def run_batch(subscriber: Subscriber, using: str = "default") -> BatchOutcome:
    """Process at most one batch; on a handler error keep the events before it.

    The checkpoint row is made on first use (committed on its own, before the batch,
    so that a failure and a wake flag have a row to go to). A failed batch is rolled
    back whole, then redone up to the failing event, so the checkpoint stops exactly
    before it and the error is recorded on the checkpoint row.
    """
    limit = subscriber.batch_size
    one_by_one = False
    while True:
        try:
            return _run_batch(subscriber, limit, using, one_by_one)
        except _NoCheckpoint:
            ensure_checkpoint(subscriber, using)
        except _BatchFailed:
            one_by_one = True  # redo it event by event to find the one that fails
        except _HandlerFailed as failure:
            if failure.index == 0:
                _record_failure(subscriber, failure, using)
                return BatchOutcome(failed=True)
            limit, one_by_one = failure.index, False


def _take_wake_flag(name: str, using: str) -> bool:
    return bool(
        Checkpoint.objects.using(using)
        .filter(name=name, wake_requested=True)
        .update(wake_requested=False)
    )


def request_wake(name: str, using: str = "default") -> None:
    Checkpoint.objects.using(using).filter(name=name).update(wake_requested=True)


@dataclass(frozen=True)
class CatchUpResult:
    """How far a catch-up went and why it stopped."""

    processed: int
    batches: int
    stopped: str  # caught_up | busy | failed | backing_off | time_budget


def catch_up(
    subscriber: Subscriber, *, time_budget: float | None = None, using: str = "default"
) -> CatchUpResult:
    """Run batches until caught up with the feed (or busy, failed, out of time)."""
    processed = batches = 0
    flagged = False
    deadline = None if time_budget is None else time.monotonic() + time_budget
    while True:
        outcome = run_batch(subscriber, using)
        processed += outcome.processed
        batches += 1
        if outcome.busy:
            if flagged:
                return CatchUpResult(processed, batches, "busy")
            # Leave a flag, then try once more: the holder may have checked the flag and
            # left just before we set it. If it is still there, it will see the flag.
            request_wake(subscriber.name, using)
            flagged = True
            continue
        flagged = False
        if outcome.failed:
            return CatchUpResult(processed, batches, "failed")
        if outcome.backing_off:
            return CatchUpResult(processed, batches, "backing_off")
        if deadline is not None and time.monotonic() > deadline:
            return CatchUpResult(processed, batches, "time_budget")
        if outcome.more:
            continue
        # The lock is released now; a wake-up that came while we held it set the flag.
        if _take_wake_flag(subscriber.name, using):
            continue
        return CatchUpResult(processed, batches, "caught_up")


def catch_up_all(
    *, time_budget: float | None = None, using: str = "default"
) -> dict[str, CatchUpResult]:
    return {s.name: catch_up(s, time_budget=time_budget, using=using) for s in all_subscribers()}


def retry_now(name: str, using: str = "default") -> bool:
    """Lift the backoff of a failed subscriber so the next wake-up retries it."""
    return bool(
        Checkpoint.objects.using(using)
        .filter(name=name)
        .exclude(retry_at=None)
        .update(retry_at=None)
    )


def has_processed(name: str, position: int, using: str = "default") -> bool:
    """Whether subscriber ``name`` is past the event at global ``position``.

    Raises LookupError when no event has that position: waiting for it would be in vain
    (positions are handed out only to committed events, or skipped for good).
    """
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT (c.cursor_transaction_id, c.cursor_position) >= (e.transaction_id, e.position) "
            "FROM events e LEFT JOIN checkpoints c ON c.name = %s WHERE e.position = %s",
            [name, position],
        )
        row = cursor.fetchone()
    if row is None:
        raise LookupError(f"no event has position {position}")
    return bool(row[0])


def wait_until_processed(
    name: str, position: int, *, timeout: float = 2.0, using: str = "default"
) -> bool:
    """Read-your-writes: wait (bounded) until ``name`` has processed ``position``.

    Raises LookupError at once for a position no event has.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if has_processed(name, position, using):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)


def has_pending(subscriber: Subscriber, using: str = "default") -> bool:
    """Whether events for ``subscriber`` exist past its checkpoint, readable or not yet.

    After a catch-up, such events sit above the horizon: a transaction that began before
    them is still open somewhere. They are not lost; this tells the caller to look again.
    """
    with connections[using].cursor() as cursor:
        cursor.execute(_PENDING_SQL, [subscriber.event_types, subscriber.name])
        return cursor.fetchone()[0]


# A lateral LIMIT 1 in feed order: the planner walks the feed index from the checkpoint.
# Joined plainly, the checkpoint's cursor is unknown when the plan is made, and every
# call read the whole events table (6 ms at 13,000 events, after every task).
_PENDING_SQL = """
    SELECT EXISTS (
        SELECT 1 FROM checkpoints c, LATERAL (
            SELECT 1 FROM events e
             WHERE (e.transaction_id, e.position) > (c.cursor_transaction_id, c.cursor_position)
               AND e.event_type = ANY(%s)
             ORDER BY e.transaction_id, e.position
             LIMIT 1
        ) AS pending
        WHERE c.name = %s
    )
"""


# Events in the feed after checkpoint ``c`` (of every type): the lag operators see.
LAG_SQL = (
    "(SELECT count(*) FROM events e "
    "WHERE (e.transaction_id, e.position) > (c.cursor_transaction_id, c.cursor_position))"
)


def lag(name: str, using: str = "default") -> int:
    """Events in the feed after the subscriber's checkpoint (of every type)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT {LAG_SQL} FROM checkpoints c WHERE c.name = %s", [name])
        row = cursor.fetchone()
    if row is None:
        raise LookupError(f"subscriber {name!r} has no checkpoint yet")
    return row[0]
