"""Append to the event store.

``append`` is a single SQL statement: a data-modifying CTE moves the stream row forward
(the row lock serializes writers of one stream only) and inserts the events, so in
autocommit mode it is atomic on its own and inside ``transaction.atomic()`` it joins the
caller's transaction. ``unique (stream_id, version)`` and ``unique (event_id)`` back it
up; when the stream is not where the writer expected, the store checks whether this
exact append is already stored (idempotent re-send) before reporting a conflict.

Personal fields are sealed on append (:mod:`eventstore.personal`), with the keys of a
whole append fetched in one query; :mod:`eventstore.reads` reads the events back.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import msgspec
import psycopg
from django.db import IntegrityError, connections, transaction

from eventstore import personal, signals, tracing
from eventstore.context import current_context
from eventstore.cursor import Cursor
from eventstore.errors import (
    ConcurrencyError,
    DuplicateEventId,
    InvalidAppend,
)
from eventstore.types import registry

logger = logging.getLogger(__name__)

STREAM_ID_MAX_LENGTH = 200
STREAM_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*-[^\s\x00-\x1f\x7f]+$"
_STREAM_ID = re.compile(STREAM_ID_PATTERN)
_metadata_encoder = msgspec.json.Encoder(uuid_format="canonical")


class StreamState(Enum):
    """Expected versions that are not an exact number."""

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"

    def __str__(self) -> str:
        return self.value


ANY = StreamState.ANY
NO_STREAM = StreamState.NO_STREAM
STREAM_EXISTS = StreamState.STREAM_EXISTS
ExpectedVersion = int | StreamState


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append, with the id that makes re-sending it idempotent."""

    payload: Any
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed: the stream's new version and each event's position."""

    stream_id: str
    version: int
    positions: list[int]
    cursor: Cursor

    @property
    def last_position(self) -> int:
        return self.positions[-1]


def category_of(stream_id: str) -> str:
    """The category of ``user-3f2c...`` is ``user``: the part before the first ``-``."""
    return stream_id.split("-", 1)[0]


def validate_stream_id(stream_id: object) -> str:
    if not isinstance(stream_id, str) or not stream_id:
        raise InvalidAppend("stream id must be a non-empty string like 'user-<id>'")
    if len(stream_id) > STREAM_ID_MAX_LENGTH:
        raise InvalidAppend(f"stream id is longer than {STREAM_ID_MAX_LENGTH} characters")
    if not _STREAM_ID.match(stream_id):
        raise InvalidAppend(
            f"stream id {stream_id!r} is malformed: expected '<category>-<id>', the category "
            "made of letters, digits and '_', the id without spaces or control characters"
        )
    return stream_id


def _validate_expected(expected_version: object) -> ExpectedVersion:
    if isinstance(expected_version, StreamState):
        return expected_version
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise InvalidAppend(
            f"expected version must be ANY, NO_STREAM, STREAM_EXISTS or an int, "
            f"not {expected_version!r}"
        )
    if expected_version < 0:
        raise InvalidAppend(
            f"expected version {expected_version} is negative; use NO_STREAM for a new stream"
        )
    return expected_version


# The feed orders events by (transaction_id, position). A transaction takes its id at its
# first write, which can come before it waits for the stream row (or it wrote something
# else first), so an append can carry an older id than the stream's previous event. Each
# append therefore stores GREATEST(its own id, the stream's last one): each stream's
# events stay in version order in the feed. It is still gap-safe: the stored id is never
# below the writer's own, and never below the horizon of any read made before it.
_ORDER_ID = "GREATEST({row}.last_transaction_id, pg_current_xact_id())"

_HEAD = {
    NO_STREAM: """
        INSERT INTO streams (stream_id, category, version, created_at, updated_at,
                             last_transaction_id)
        VALUES (%(stream_id)s, %(category)s, %(count)s - 1, now(), now(), pg_current_xact_id())
        ON CONFLICT (stream_id) DO NOTHING
        RETURNING version, last_transaction_id""",
    ANY: f"""
        INSERT INTO streams AS s (stream_id, category, version, created_at, updated_at,
                                  last_transaction_id)
        VALUES (%(stream_id)s, %(category)s, %(count)s - 1, now(), now(), pg_current_xact_id())
        ON CONFLICT (stream_id)
        DO UPDATE SET version = s.version + %(count)s, updated_at = now(),
                      last_transaction_id = {_ORDER_ID.format(row="s")}
        RETURNING version, last_transaction_id""",
    STREAM_EXISTS: f"""
        UPDATE streams SET version = version + %(count)s, updated_at = now(),
                           last_transaction_id = {_ORDER_ID.format(row="streams")}
        WHERE stream_id = %(stream_id)s
        RETURNING version, last_transaction_id""",
    "exact": f"""
        UPDATE streams SET version = version + %(count)s, updated_at = now(),
                           last_transaction_id = {_ORDER_ID.format(row="streams")}
        WHERE stream_id = %(stream_id)s AND version = %(expected)s
        RETURNING version, last_transaction_id""",
}

_BODY = """
    INSERT INTO events (stream_id, version, category, event_id, event_type, schema_version,
                        data, metadata, recorded_at, transaction_id)
    SELECT %(stream_id)s, head.version - %(count)s + e.ord, %(category)s, e.event_id,
           e.event_type, e.schema_version, e.data, e.metadata, now(), head.last_transaction_id
    FROM head,
         unnest(%(event_ids)s::uuid[], %(event_types)s::text[], %(schema_versions)s::int2[],
                %(data)s::text[]::jsonb[], %(metadata)s::text[]::jsonb[])
             WITH ORDINALITY AS e(event_id, event_type, schema_version, data, metadata, ord)
    ORDER BY e.ord
    RETURNING position, version, transaction_id::text
"""

# Binary placeholders: parameters travel as typed binary values, so psycopg need not quote
# every JSON text element in Python and PostgreSQL can reuse the prepared plan.
_APPEND_SQL = {
    key: re.sub(r"%\((\w+)\)s", r"%(\1)b", f"WITH head AS ({head}) {_BODY}")
    for key, head in _HEAD.items()
}


def append(
    stream_id: str,
    events: Sequence[Any],
    expected_version: ExpectedVersion = ANY,
    *,
    using: str = "default",
) -> AppendResult:
    """Append ``events`` (payloads or :class:`NewEvent`) to a stream, all or nothing.

    Raises :class:`ConcurrencyError` when the stream is not at ``expected_version``,
    :class:`DuplicateEventId` when the event ids are stored elsewhere, and
    :class:`InvalidAppend` (before any write) for bad input. A re-send must carry its
    events' ids (:class:`NewEvent`); payloads get new ids here. Inside a transaction, an
    append of payloads takes no savepoint: a caller that catches a database error from it
    and goes on needs an ``atomic()`` block of its own around it.
    """
    validate_stream_id(stream_id)
    expected = _validate_expected(expected_version)
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence) or not events:
        raise InvalidAppend("an append needs a non-empty list of events")
    new_events = [e if isinstance(e, NewEvent) else NewEvent(e) for e in events]
    # Ids made here cannot be stored yet: the append is no re-send, so there is no refusal
    # by the event id index to recover from, and no savepoint to pay for. A conflict of
    # versions is no error (no row comes back); a deadlock or a timeout still is, and then
    # the caller's transaction, not a savepoint, is what rolls back.
    fresh_ids = not any(isinstance(e, NewEvent) for e in events)
    # The trace context too (when tracing is on), so those who handle the events continue it.
    context_metadata = {**current_context().as_metadata(), **tracing.carrier()}
    params: dict[str, Any] = {
        "stream_id": stream_id,
        "category": category_of(stream_id),
        "count": len(new_events),
        "expected": expected if isinstance(expected, int) else None,
        "event_ids": [],
        "event_types": [],
        "schema_versions": [],
        "data": [],
        "metadata": [],
    }
    keys = personal.keyring(using)
    subjects = {
        subject
        for e in new_events
        if (subject := registry.for_event(e.payload).subject_of(e.payload)) is not None
    }
    if subjects:  # one round trip for the keys of the whole append, if any
        if expected is not NO_STREAM:  # an existing stream: its subjects' keys most likely too
            keys.prefetch(subjects)
        keys.ensure(subjects)  # creates those that are missing
    for new_event in new_events:
        event_type, data = registry.encode(new_event.payload, keys)
        params["event_ids"].append(new_event.event_id)
        params["event_types"].append(event_type.name)
        params["schema_versions"].append(event_type.version)
        params["data"].append(data)
        metadata = {**context_metadata, **new_event.metadata}
        try:
            params["metadata"].append(_metadata_encoder.encode(metadata).decode())
        except TypeError as exc:
            raise InvalidAppend(f"event metadata cannot be stored as JSON: {exc}") from exc
    if len(set(params["event_ids"])) != len(new_events):
        raise InvalidAppend("the same event id appears twice in one append")

    sql = _APPEND_SQL["exact" if isinstance(expected, int) else expected]
    connection = connections[using]
    rows: list[tuple[int, int, str]] = []
    nested = connection.in_atomic_block
    try:
        rows = _execute_append(connection, sql, params, nested and not fresh_ids, using)
    except IntegrityError:
        if nested and fresh_ids:  # no savepoint: the caller's transaction is done for
            raise
        rows = []
    if not rows:
        return _resolve_refused_append(stream_id, expected, params["event_ids"], using)

    rows.sort(key=lambda row: row[1])
    result = AppendResult(
        stream_id=stream_id,
        version=rows[-1][1],
        positions=[row[0] for row in rows],
        cursor=Cursor(int(rows[-1][2]), rows[-1][0]),
    )
    event_types = params["event_types"]
    transaction.on_commit(
        lambda: signals.events_appended.send(
            sender=append, stream_id=stream_id, event_types=event_types, result=result
        ),
        using=using,
        robust=True,
    )
    return result


def _execute_append(
    connection: Any, sql: str, params: dict[str, Any], savepoint: bool, using: str
) -> list[tuple[int, int, str]]:
    """Run the append statement; its errors come out as Django's database errors.

    With ``savepoint`` (inside a caller's transaction, for events whose ids may be stored
    already), a savepoint keeps the transaction usable if the event id index refuses the
    insert, so that the store can tell a re-send from a conflict; it costs two round
    trips. In autocommit mode the single statement is atomic anyway. The statement runs
    on Django's connection (same transaction) through a server-side-binding psycopg
    cursor, prepared once per connection.
    """
    with transaction.atomic(using=using) if savepoint else _no_transaction():
        connection.ensure_connection()
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(sql, params, prepare=True)
            return cursor.fetchall()


class _no_transaction:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _resolve_refused_append(
    stream_id: str, expected: ExpectedVersion, event_ids: list[uuid.UUID], using: str
) -> AppendResult:
    """Tell an idempotent re-send (return what is stored) from a real conflict."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT event_id, stream_id, version, position, transaction_id::text "
            "FROM events WHERE event_id = ANY(%s) ORDER BY version",
            [event_ids],
        )
        stored = cursor.fetchall()
        cursor.execute("SELECT version FROM streams WHERE stream_id = %s", [stream_id])
        row = cursor.fetchone()
    actual = row[0] if row else None
    if not stored:
        raise ConcurrencyError(stream_id, expected, actual)
    by_id = {r[0]: r for r in stored}
    same_place = (
        len(stored) == len(event_ids)
        and all(r[1] == stream_id for r in stored)
        and [by_id[event_id][2] for event_id in event_ids]
        == list(range(stored[0][2], stored[0][2] + len(event_ids)))
    )
    first_version = stored[0][2]
    if same_place and (
        (isinstance(expected, int) and first_version == expected + 1)
        or (expected is NO_STREAM and first_version == 0)
        or expected in (ANY, STREAM_EXISTS)
    ):
        last = stored[-1]
        return AppendResult(
            stream_id=stream_id,
            version=last[2],
            positions=[r[3] for r in stored],
            cursor=Cursor(int(last[4]), last[3]),
        )
    raise DuplicateEventId(stream_id, [r[0] for r in stored])
