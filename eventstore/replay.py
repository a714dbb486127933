"""Rebuild a projection's read models from the first event, aside, then swap them in.

The rebuild writes into copies of the read-model tables in a schema of its own: each
batch runs with ``search_path`` pointing there first, so the projection's ordinary
handlers (ORM or SQL, unqualified table names) write to the copies while they still
read events from the real table. Batches commit one by one, so the rebuild never holds
back other subscribers' horizon for long. The swap is one short transaction: it takes
the live projection's lock, catches the copy up to the end of the feed, replaces the
live rows with the copy's, and moves the live checkpoint. Readers see the old rows
until that commit and the new ones after it; never an empty or half-built table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.db import connections, transaction
from django.db.models import Model

from eventstore import store, subscriptions
from eventstore.cursor import Cursor
from eventstore.subscriptions import Projection

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
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS {_quote(connection, schema)} CASCADE")
        cursor.execute(f"CREATE SCHEMA {_quote(connection, schema)}")
        for table in _tables(projection):
            cursor.execute(
                f"CREATE TABLE {_quote(connection, schema)}.{_quote(connection, table)} "
                f"(LIKE {_quote(connection, table)} INCLUDING ALL)"  # the live one, via search_path
            )


def drop_scratch(projection: Projection, using: str = "default") -> None:
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            f"DROP SCHEMA IF EXISTS {_quote(connection, scratch_schema(projection))} CASCADE"
        )


def _batch(
    projection: Projection, schema: str, cursor: Cursor, batch_size: int, using: str
) -> store.FeedPage:
    """Handle one page into the scratch tables; call inside a transaction."""
    connection = connections[using]
    with connection.cursor() as db:  # scratch first, then wherever the live tables are
        db.execute(
            "SELECT set_config('search_path', %s || ', ' || current_setting('search_path'), true)",
            [_quote(connection, schema)],
        )
    page = store.read_all(cursor, limit=batch_size, event_types=projection.event_types, using=using)
    projection.handle_batch(page.events)
    with connection.cursor() as db:
        db.execute("SET LOCAL search_path TO DEFAULT")
    return page


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

    def drain(cursor: Cursor, *, commit_each: bool) -> Cursor:
        """Handle pages into the scratch tables until the feed's end; the new cursor."""
        nonlocal handled
        while True:
            with transaction.atomic(using=using) if commit_each else contextlib.nullcontext():
                page = _batch(projection, schema, cursor, batch_size, using)
            cursor = page.next_cursor
            handled += len(page.events)
            if progress:
                progress(len(page.events))
            if not page.is_full:
                return cursor

    try:
        _prepare(projection, schema, using)
        cursor = drain(Cursor.start(), commit_each=True)  # bounded transactions
        rows: dict[str, int] = {}
        with transaction.atomic(using=using):
            subscriptions.ensure_checkpoint(projection, using)
            subscriptions.lock(projection.name, using)  # the live projection waits
            cursor = drain(cursor, commit_each=False)  # the tail since the last batch
            with connection.cursor() as db:
                for table in tables:
                    live = _quote(connection, table)  # search_path is the default again
                    built = f"{_quote(connection, schema)}.{_quote(connection, table)}"
                    db.execute(f"DELETE FROM {live}")
                    db.execute(f"INSERT INTO {live} SELECT * FROM {built}")
                    rows[table] = db.rowcount
            subscriptions.reset_checkpoint(projection.name, cursor, handled, using)
    finally:
        drop_scratch(projection, using)
    return ReplayResult(projection.name, handled, rows)
