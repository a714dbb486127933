"""Rebuild a projection's read models from the first event, aside, then swap them in.

The rebuild writes into copies of the read-model tables in a schema of its own: each
batch runs with ``search_path`` pointing there first, so the projection's ordinary
handlers (ORM or SQL, unqualified table names) write to the copies while they still
read events from the real table (read one page ahead, on a second connection). Batches
commit one by one, so the rebuild never holds back other subscribers' horizon for long.
The swap is one short transaction: it takes the locks of all the live projection's
partitions, catches the copy up to the end of the feed, replaces the live rows with the
copy's, and puts every partition's checkpoint there (for the configured partition count:
a replay is also how a projection changes its count). Readers see the old rows until that
commit and the new ones after it; never an empty or half-built table.

Events an operator skipped stay skipped; an event that fails parks its stream as in the
live projection, and the parked streams after the swap are the replay's.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.db import connections, transaction
from django.db.models import Model

from eventstore import parking, reads, subscriptions
from eventstore.cursor import Cursor
from eventstore.models import Checkpoint, ParkedStream, SkippedEvent
from eventstore.partitions import partition_of
from eventstore.reads import Undecodable
from eventstore.subscribers import Partition, Projection

Progress = Callable[[int], None]
REPLAY_LOCK_NAMESPACE = 0x5E6  # session-level: held across the replay's many transactions


@dataclass(frozen=True)
class ReplayResult:
    name: str
    events: int
    rows: dict[str, int]


def _quote(connection, name: str) -> str:
    return connection.ops.quote_name(name)


def scratch_schema(projection: Projection) -> str:
    return f"replay_{projection.name}".replace("-", "_").lower()[:63]


def count_events(projection: Projection, using: str = "default") -> int:
    """How many events a replay of ``projection`` will handle (for progress bars)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM events WHERE event_type = ANY(%s)", [projection.event_types]
        )
        return cursor.fetchone()[0]


def _tables(projection: Projection) -> list[str]:
    models: list[type[Model]] = list(projection.read_models)
    if not models:
        raise ValueError(f"projection {projection.name!r} declares no read_models to rebuild")
    return [model._meta.db_table for model in models]


def _prepare(projection: Projection, schema: str, using: str) -> None:
    """Create the scratch copies: the live tables' columns, defaults, checks and keys.

    Built for a rebuild's writes, which update the same rows batch after batch:
    UNLOGGED (no WAL for rows a crash would only make us rebuild again); pages left
    partly empty, so that an updated row stays on its page (a HOT update: no index entry);
    and, of the indexes, only the unique ones and those behind constraints (handlers
    need them for ``ON CONFLICT`` and to fail where the live table would). The others
    serve the live table's readers, and the swap's INSERT fills the live ones anyway. A
    handler that looks rows up by a non-unique column would scan the copy: give that
    column a unique index, or keep its index here.
    """
    connection = connections[using]
    quoted_schema = _quote(connection, schema)
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS {quoted_schema} CASCADE")
        cursor.execute(f"CREATE SCHEMA {quoted_schema}")
        for table in _tables(projection):
            cursor.execute(
                f"CREATE UNLOGGED TABLE {quoted_schema}.{_quote(connection, table)} "
                f"(LIKE {_quote(connection, table)} INCLUDING ALL)"  # the live one, via search_path
                " WITH (fillfactor = 70)"
            )
        cursor.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND NOT i.indisunique "
            "AND NOT EXISTS (SELECT FROM pg_constraint WHERE conindid = i.indexrelid)",
            [schema],
        )
        for (index,) in cursor.fetchall():
            cursor.execute(f"DROP INDEX {quoted_schema}.{_quote(connection, index)}")


def drop_scratch(projection: Projection, using: str = "default") -> None:
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            f"DROP SCHEMA IF EXISTS {_quote(connection, scratch_schema(projection))} CASCADE"
        )


def _handle(
    projection: Projection,
    schema: str,
    page: reads.FeedPage,
    skipped: set,
    parks: parking.Parks,
    using: str,
) -> None:
    """Handle one page into the scratch tables; call inside a transaction. Events an
    operator skipped are left out; one that fails parks its stream in ``parks``."""
    connection = connections[using]
    with connection.cursor() as db:  # scratch first, then wherever the live tables are
        db.execute(
            "SELECT set_config('search_path', %s || ', ' || current_setting('search_path'), true)",
            [_quote(connection, schema)],
        )
    events = [e for e in page.events if e.event_id not in skipped and e.stream_id not in parks]
    if all(not isinstance(e.data, Undecodable) for e in events):
        try:
            with transaction.atomic(using=using):
                projection.handle_batch(events)
            events = []
        except parking.TRANSIENT:
            raise
        except Exception:
            pass  # redone event by event below, to park only what fails
    if events:
        parking.handle(projection, events, parks)
    with connection.cursor() as db:
        db.execute("SET LOCAL search_path TO DEFAULT")


def _read(projection: Projection, cursor: Cursor, batch_size: int, using: str) -> reads.FeedPage:
    return reads.read_all(
        cursor,
        limit=batch_size,
        event_types=projection.event_types,
        keep_undecodable=True,
        using=using,
    )


def _pages(
    projection: Projection, cursor: Cursor, batch_size: int, using: str, *, ahead: bool
) -> Iterator[reads.FeedPage]:
    """The feed's pages from ``cursor`` to its end; with ``ahead``, read one page ahead.

    Reading ahead, a thread reads and decodes the next page on a connection of its own
    while the caller writes this one: a replay spends about as long in Python as waiting
    for PostgreSQL, so the overlap pays where a core is free. Besides the page being
    written it holds two at most (one handed over, one being read), so memory stays
    flat. Inside a caller's transaction it reads in line: another connection would not
    see its events.
    """
    if not ahead or connections[using].in_atomic_block:
        while True:
            page = _read(projection, cursor, batch_size, using)
            yield page
            if not page.is_full:
                return
            cursor = page.next_cursor

    handover: queue.Queue[reads.FeedPage | BaseException] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: reads.FeedPage | BaseException) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                handover.put(item, timeout=0.1)
                return True
        return False

    def reader(cursor: Cursor) -> None:
        try:
            while True:
                page = _read(projection, cursor, batch_size, using)
                if not hand_over(page) or not page.is_full:
                    return
                cursor = page.next_cursor
        except BaseException as exc:  # raised again in the caller's thread
            hand_over(exc)
        finally:
            connections[using].close()  # this thread's own

    thread = threading.Thread(target=reader, args=(cursor,), name="replay-reader", daemon=True)
    thread.start()
    try:
        while True:
            page = handover.get()
            if isinstance(page, BaseException):
                raise page
            yield page
            if not page.is_full:
                return
    finally:  # done, failed or interrupted (Ctrl-C): stop the reader before going on
        stop.set()
        thread.join()


def replay(
    projection: Projection,
    *,
    batch_size: int = 2000,
    progress: Progress | None = None,
    using: str = "default",
) -> ReplayResult:
    """Rebuild ``projection`` from the first event and swap the result in.

    Interrupted (KeyboardInterrupt or any error), it drops its scratch tables and leaves
    the live read model and checkpoint untouched.
    """
    with exclusive(projection, using):
        return rebuild(projection, batch_size=batch_size, progress=progress, using=using)


def replay_lock_key(name: str) -> int:
    return subscriptions.lock_key(f"replay:{name}")


class ReplayInProgress(RuntimeError):
    """Another replay of the same projection is running (both would share its scratch)."""


@contextlib.contextmanager
def exclusive(projection: Projection, using: str = "default") -> Iterator[None]:
    """Hold the projection's replay lock, or raise :class:`ReplayInProgress` at once."""
    key = replay_lock_key(projection.name)
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [REPLAY_LOCK_NAMESPACE, key])
        if not cursor.fetchone()[0]:
            raise ReplayInProgress(f"a replay of {projection.name!r} is already running")
    try:
        yield
    finally:
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [REPLAY_LOCK_NAMESPACE, key])


def rebuild(
    projection: Projection,
    *,
    batch_size: int = 2000,
    progress: Progress | None = None,
    using: str = "default",
) -> ReplayResult:
    """The replay itself; call it inside :func:`exclusive`."""
    schema = scratch_schema(projection)
    tables = _tables(projection)
    connection = connections[using]
    handled = 0
    skipped = set(
        SkippedEvent.objects.using(using)
        .filter(subscriber=projection.name)
        .values_list("event_id", flat=True)
    )
    parks: parking.Parks = {}

    def drain(cursor: Cursor, *, commit_each: bool) -> Cursor:
        """Handle pages into the scratch tables until the feed's end; the new cursor."""
        nonlocal handled
        pages = _pages(projection, cursor, batch_size, using, ahead=commit_each)
        with contextlib.closing(pages):
            for page in pages:
                with transaction.atomic(using=using) if commit_each else contextlib.nullcontext():
                    _handle(projection, schema, page, skipped, parks, using)
                cursor = page.next_cursor
                handled += len(page.events)
                if progress:
                    progress(len(page.events))
        return cursor

    try:
        _prepare(projection, schema, using)
        cursor = drain(Cursor.start(), commit_each=True)  # bounded transactions
        rows: dict[str, int] = {}
        with transaction.atomic(using=using):
            _lock_every_partition(projection, using)  # the live projection waits
            cursor = drain(cursor, commit_each=False)  # the tail since the last batch
            with connection.cursor() as db:
                for table in tables:
                    live = _quote(connection, table)  # search_path is the default again
                    built = f"{_quote(connection, schema)}.{_quote(connection, table)}"
                    db.execute(f"DELETE FROM {live}")
                    db.execute(f"INSERT INTO {live} SELECT * FROM {built}")
                    rows[table] = db.rowcount
            subscriptions.reset_checkpoints(projection, cursor, handled, using)
            _replace_parked(projection, parks, using)
    finally:
        drop_scratch(projection, using)
    return ReplayResult(projection.name, handled, rows)


def _lock_every_partition(projection: Projection, using: str) -> None:
    """The locks of the configured partitions and of those the checkpoints were made for."""
    stored = (
        Checkpoint.objects.using(using)
        .filter(name=projection.name)
        .values_list("partitions", flat=True)
    )
    for number in range(max([projection.partition_count, *stored])):
        subscriptions.lock(projection.name, number, using)


def _replace_parked(projection: Projection, parks: parking.Parks, using: str) -> None:
    ParkedStream.objects.using(using).filter(subscriber=projection.name).delete()
    count = projection.partition_count
    by_partition: dict[int, parking.Parks] = {}
    for stream_id, park in parks.items():
        by_partition.setdefault(partition_of(stream_id, count), {})[stream_id] = park
    for number, parked in by_partition.items():
        parking.park(Partition(projection, number, count), parked, using)
