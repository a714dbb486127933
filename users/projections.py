"""The users list projection: folds user events into ``users_user`` rows.

A batch is folded in memory: one read of the rows it touches, the fold on plain
:class:`UserRow` records, one upsert of those rows. A rebuild is this same
code over every event (in the replay's scratch tables), so its speed is the batch's.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import field as dataclass_field
from dataclasses import make_dataclass
from enum import Enum
from functools import cache
from operator import attrgetter
from typing import Any
from uuid import UUID

import psycopg
from django.db import connection
from django.db.models import Field

from eventstore.reads import RecordedEvent
from eventstore.subscribers import Projection, handles
from users.events import UserCreated, UserDeleted, UserErased, UserUpdated, UserWelcomed
from users.models import UserRecord

ACTIVE = UserRecord.Status.ACTIVE.value
DELETED = UserRecord.Status.DELETED.value
ERASED = UserRecord.Status.ERASED.value


def _default(field: Field) -> Any:
    value = field.get_default()
    # Plain str values: psycopg would dump a TextChoices member as a PostgreSQL enum.
    return value.value if isinstance(value, Enum) else value


_FIELDS = UserRecord._meta.concrete_fields
COLUMNS = tuple(field.column for field in _FIELDS)
_values = attrgetter(*(field.attname for field in _FIELDS))

# A ``users_user`` row while a batch is folded: the model's concrete fields, in order.
UserRow = make_dataclass(
    "UserRow",
    [(field.attname, Any, dataclass_field(default=_default(field))) for field in _FIELDS],
    slots=True,
)

# Unqualified ``users_user``: a replay's search_path points it at the scratch copy.
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM users_user WHERE id = ANY(%b)"


@cache
def _upsert_sql() -> str:
    """One statement for a batch: a column of values per field, unnested into rows."""
    arrays = ", ".join(f"%b::{field.db_type(connection)}[]" for field in _FIELDS)
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in COLUMNS[1:])
    return (
        f"INSERT INTO users_user ({', '.join(COLUMNS)}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT (id) DO UPDATE SET {updates}"
    )


@contextmanager
def _cursor() -> Iterator[psycopg.Cursor]:
    """A binary psycopg cursor on Django's connection (same transaction and search_path).

    Why not the ORM: ``bulk_create`` ran ``get_db_prep_save`` on every field of every
    row and quoted every value in Python, and reading model instances went through
    Django's pure-Python timestamp parser; that was most of a rebuild's time.
    Binary parameters and results use psycopg's C adapters (timestamps come back in the
    session's time zone, which Django sets to its own), and the statements are prepared
    once per connection, as ``store.append`` does.
    """
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


def load_rows(ids: Collection[UUID]) -> dict[UUID, UserRow]:
    """The stored rows of these users, by id (users without a row are left out)."""
    with _cursor() as cursor:
        cursor.execute(_SELECT, [list(ids)], prepare=True, binary=True)
        return {row[0]: UserRow(*row) for row in cursor.fetchall()}


def save_rows(rows: Iterable[UserRow]) -> None:
    """Insert or overwrite these rows with one statement (each id at most once)."""
    columns = [list(column) for column in zip(*map(_values, rows), strict=True)]
    if columns:
        with _cursor() as cursor:
            cursor.execute(_upsert_sql(), columns, prepare=True)


class UserListProjection(Projection):
    name = "users"
    read_models = [UserRecord]
    batch_size = 1000

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        if not events:
            return
        rows = load_rows({event.data.user_id for event in events})
        for event in events:
            user_id = event.data.user_id
            row = rows.get(user_id)
            if row is not None and event.version <= row.version:
                continue  # already projected (a row rebuilt ahead of its checkpoint)
            if isinstance(event.data, UserCreated):
                row = rows[user_id] = UserRow(id=user_id, created_at=event.recorded_at)
            elif row is None:
                continue  # history before its creation cannot happen; nothing to update
            self.fold(row, event)
        save_rows(rows.values())

    def fold(self, row: UserRow, event: RecordedEvent) -> None:
        self.dispatch(event, row)
        row.version = event.version
        row.last_position = event.position
        row.updated_at = event.recorded_at

    @handles(UserCreated)
    def created(self, row: UserRow, event: RecordedEvent) -> None:
        data: UserCreated = event.data
        row.email, row.first_name, row.last_name = data.email, data.first_name, data.last_name
        row.status = ACTIVE

    @handles(UserUpdated)
    def updated(self, row: UserRow, event: RecordedEvent) -> None:
        for field in ("email", "first_name", "last_name"):
            value = getattr(event.data, field)
            if value is not None:
                setattr(row, field, value)

    @handles(UserDeleted)
    def deleted(self, row: UserRow, event: RecordedEvent) -> None:
        row.status = DELETED

    @handles(UserWelcomed)
    def welcomed(self, row: UserRow, event: RecordedEvent) -> None:
        row.welcomed_at = event.data.welcomed_at

    @handles(UserErased)
    def erased(self, row: UserRow, event: RecordedEvent) -> None:
        # Blank, not the events' "erased" marker: the row keeps nothing of the person.
        row.email = row.first_name = row.last_name = ""
        row.status = ERASED
