"""Append to and read from the event store.

``append`` is a single SQL statement: a data-modifying CTE moves the stream row forward
(the row lock serializes writers of one stream only) and inserts the events, so in
autocommit mode it is atomic on its own and inside ``transaction.atomic()`` it joins the
caller's transaction. ``unique (stream_id, version)`` and ``unique (event_id)`` back it
up; when the stream is not where the writer expected, the store checks whether this
exact append is already stored (idempotent re-send) before reporting a conflict.

The global and category feeds are gap-safe: each event stores the id of the transaction
that wrote it, and readers only read below the oldest transaction still running
(``pg_snapshot_xmin``), ordered by (transaction id, position). An event whose
transaction commits late therefore cannot be skipped, and no writer waits for another.

Personal fields are sealed on append and opened on read (:mod:`eventstore.personal`),
with the keys of a whole append, stream or page fetched in one query.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
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
    EventDecodingError,
    InvalidAppend,
    StreamNotFound,
    UnknownEventType,
)
from eventstore.partitions import BUCKETS
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


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored, decoded into its registered class."""

    position: int
    cursor: Cursor
    stream_id: str
    version: int
    event_id: uuid.UUID
    event_type: str
    data: Any
    metadata: dict[str, Any]
    recorded_at: datetime

    @property
    def category(self) -> str:
        return category_of(self.stream_id)


@dataclass(frozen=True, slots=True)
class FeedPage:
    """A page of a feed and the cursor to continue from, even when the page is empty.

    ``horizon`` is the point below which the feed was final when the page was read.
    When the page is not full, ``next_cursor`` moves up to it: nothing matching the
    filters can ever appear before it, so followers do not re-scan what they skipped.
    """

    events: list[RecordedEvent]
    next_cursor: Cursor
    horizon: Cursor

    @property
    def is_full(self) -> bool:
        return bool(self.events) and self.next_cursor == self.events[-1].cursor


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


# --- reads --------------------------------------------------------------------

_COLUMNS = (
    "position, transaction_id::text, stream_id, version, event_id, event_type, "
    "schema_version, data::text, metadata::text, recorded_at"
)
_metadata_decoder = msgspec.json.Decoder(dict[str, Any])
_TIMESTAMPTZ = psycopg.adapters.types["timestamptz"].oid
_TIMESTAMPTZ_LOADER = psycopg.adapters.get_loader(_TIMESTAMPTZ, psycopg.pq.Format.TEXT)


@contextmanager
def _events_cursor(using: str) -> Iterator[Any]:
    """Django's cursor, reading ``recorded_at`` with psycopg's own (C) timestamp loader.

    Django's loader parses timestamps in Python (about 5 µs each, a tenth of a rebuild's
    time per event) only to attach its time zone; with ``USE_TZ`` it has set the
    session's time zone to that same zone, in which psycopg's loader returns them.
    """
    connection = connections[using]
    with connection.cursor() as cursor:
        if connection.timezone is not None:  # None: USE_TZ is off, keep Django's naive ones
            cursor.cursor.adapters.register_loader(_TIMESTAMPTZ, _TIMESTAMPTZ_LOADER)
        yield cursor


@dataclass(frozen=True, slots=True)
class Undecodable:
    """The payload of an event this release could not decode (for subscribers to park)."""

    error: str


def _events(
    rows: Sequence[Sequence[Any]],
    keys: personal.KeyRing,
    lenient: bool = False,
    keep: bool = False,
) -> list[RecordedEvent]:
    """Rows of ``_COLUMNS`` as RecordedEvents, their payloads decoded together (one key
    query for all the people they seal)."""

    def undecodable(exc: Exception, item: Sequence[Any]) -> Any:
        if keep:  # a subscriber's read: it parks the stream instead of stopping
            return Undecodable(f"{type(exc).__name__}: {exc}")
        # Only for showing events (staff pages, the feed API): an event written by a
        # newer release, or one this release cannot read, is shown as stored rather
        # than breaking the page. Subscribers and aggregates never read leniently.
        logger.warning("showing event %s as stored: %s", item[3], exc)
        return msgspec.json.decode(item[2])

    items = [(row[5], row[6], row[7], row[0]) for row in rows]
    payloads = registry.decode_all(items, keys, undecodable if keep or lenient else None)
    decode_meta = _metadata_decoder.decode
    events = []
    for row, payload in zip(rows, payloads, strict=True):
        position, xid, stream_id, version, event_id, event_type, _, _, meta, at = row
        events.append(
            RecordedEvent(  # positional: keywords cost a frozen dataclass more, per event
                position,
                Cursor(int(xid), position),
                stream_id,
                version,
                event_id,
                event_type,
                payload,
                decode_meta(meta),
                at,
            )
        )
    return events


def shown_payload(
    event_type: str, schema_version: int, data: Any, *, using: str = "default"
) -> Any:
    """An event's payload as JSON-able values, personal fields opened, for staff pages.

    ``data`` as the ORM reads it (a dict). Read leniently: a payload this release
    cannot read is shown as stored.
    """
    text = data if isinstance(data, str) else _metadata_encoder.encode(data).decode()
    try:
        payload = registry.decode_all([(event_type, schema_version, text)], personal.keyring(using))
        return msgspec.to_builtins(payload[0])
    except (UnknownEventType, EventDecodingError):
        return data


def stream_version(stream_id: str, *, using: str = "default") -> int | None:
    """The stream's current version, or None when it does not exist."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT version FROM streams WHERE stream_id = %s", [stream_id])
        row = cursor.fetchone()
    return row[0] if row else None


def read_stream(
    stream_id: str,
    *,
    from_version: int | None = None,
    backwards: bool = False,
    limit: int | None = None,
    lenient: bool = False,
    using: str = "default",
) -> list[RecordedEvent]:
    """Events of one stream from a version (inclusive), forwards or backwards.

    ``lenient``: an event whose type or payload this release cannot read comes back with
    its stored JSON as ``data`` instead of raising (for showing events, never folding).
    """
    conditions = ["stream_id = %s"]
    params: list[Any] = [stream_id]
    if from_version is not None:
        conditions.append("version <= %s" if backwards else "version >= %s")
        params.append(from_version)
    sql = (
        f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(conditions)} "
        f"ORDER BY version {'DESC' if backwards else 'ASC'}"
    )
    if limit is not None:
        sql += " LIMIT %s"
        params.append(limit)
    with _events_cursor(using) as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return _events(rows, personal.keyring(using), lenient)


_STREAM_PAYLOADS_SQL = (
    "SELECT event_type, schema_version, data::text, version FROM events "
    "WHERE stream_id = %s ORDER BY version"
)


def load_stream_payloads(stream_id: str, *, using: str = "default") -> list[tuple[int, Any]]:
    """(version, event) pairs of a whole stream: the lean read used to rebuild aggregates.

    With the keys in this database, the key of the stream's person comes in the same
    round trip (a pipeline of two statements); a load is one round trip, as without
    personal data.
    """
    keys = personal.keyring(using)
    key_sql = keys.stream_key_sql(using)
    connection = connections[using]
    connection.ensure_connection()
    conn = connection.connection
    with connection.wrap_database_errors, psycopg.Cursor(conn) as cursor:
        if key_sql is None:
            cursor.execute(_STREAM_PAYLOADS_SQL, [stream_id], prepare=True)
        else:
            with conn.pipeline(), psycopg.Cursor(conn) as key_cursor:
                cursor.execute(_STREAM_PAYLOADS_SQL, [stream_id], prepare=True)
                key_cursor.execute(key_sql, [stream_id], prepare=True, binary=True)
                keys.add(key_cursor.fetchall())
        rows = cursor.fetchall()
    if not rows:
        raise StreamNotFound(stream_id)
    payloads = registry.decode_all(rows, keys)
    return [(row[3], payload) for row, payload in zip(rows, payloads, strict=True)]


# One statement, so the horizon and the rows come from the same snapshot: reading the
# horizon separately could move it past events committed in between. ORDER BY names the
# table's columns: bare ``transaction_id`` would mean the select list's text cast, and
# sort 1000 before 999.
_FEED_SQL = f"""
    WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
    SELECT h.xmin::text, e.* FROM h LEFT JOIN LATERAL (
        SELECT {_COLUMNS} FROM events
        WHERE (transaction_id, position) > (%(xid)s::xid8, %(position)s)
          AND transaction_id < h.xmin
          {{filters}}
        ORDER BY events.transaction_id, events.position
        LIMIT %(limit)s
    ) e ON true
"""

# A partition's feed: one ordered index scan per bucket, merged (PostgreSQL's Merge
# Append reads no more of each than the page needs).
_BUCKET_SQL = f"""
    (SELECT events.transaction_id AS sort_xid, {_COLUMNS} FROM events
     WHERE bucket = {{bucket}} AND (transaction_id, position) > (%(xid)s::xid8, %(position)s)
       AND transaction_id < h.xmin {{filters}}
     ORDER BY events.transaction_id, events.position LIMIT %(limit)s)
"""
_PARTITION_SQL = """
    WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
    SELECT h.xmin::text, e.* FROM h LEFT JOIN LATERAL (
        SELECT position, transaction_id, stream_id, version, event_id, event_type,
               schema_version, data, metadata, recorded_at
        FROM ({branches}) AS b ORDER BY b.sort_xid, b.position LIMIT %(limit)s
    ) e ON true
"""


def _partition_sql(buckets: Sequence[int], filters: str) -> str:
    branches = " UNION ALL ".join(
        _BUCKET_SQL.replace("{bucket}", str(int(b))).replace("{filters}", filters) for b in buckets
    )
    return _PARTITION_SQL.replace("{branches}", branches)


def horizon(*, using: str = "default") -> Cursor:
    """Everything before this cursor is final: no transaction can still add to it."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        return Cursor(int(cursor.fetchone()[0]), 0)


def read_all(
    after: Cursor | None = None,
    *,
    limit: int = 500,
    categories: Iterable[str] | None = None,
    event_types: Iterable[str] | None = None,
    buckets: Sequence[int] | None = None,
    exclude_streams: Sequence[str] = (),
    until: Cursor | None = None,
    lenient: bool = False,
    keep_undecodable: bool = False,
    using: str = "default",
) -> FeedPage:
    """The next page of the global feed after ``after``, optionally filtered.

    The returned cursor continues after the page; on an empty page it is unchanged, so a
    follower can poll with it without missing or re-reading events. ``buckets`` reads a
    partition's feed (:mod:`eventstore.partitions`); ``exclude_streams`` leaves parked
    streams out; ``until`` stops at that cursor (inclusive). ``lenient`` as in
    :func:`read_stream`; ``keep_undecodable`` returns an event this release cannot
    decode with an :class:`Undecodable` payload instead of raising.
    """
    after = after or Cursor.start()
    sql, params = feed_query(after, limit, categories, event_types, buckets, exclude_streams, until)
    with _events_cursor(using) as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    horizon = Cursor(int(rows[0][0]), 0)
    rows = [row[1:] for row in rows if row[1] is not None]  # without the horizon
    events = _events(rows, personal.keyring(using), lenient, keep_undecodable)
    if len(events) == params["limit"]:
        next_cursor = events[-1].cursor
    else:
        next_cursor = max(after, horizon, events[-1].cursor if events else after)
        if until is not None:
            next_cursor = min(next_cursor, max(after, until))
    return FeedPage(events, next_cursor, horizon)


def feed_query(
    after: Cursor,
    limit: int,
    categories: Iterable[str] | None = None,
    event_types: Iterable[str] | None = None,
    buckets: Sequence[int] | None = None,
    exclude_streams: Sequence[str] = (),
    until: Cursor | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of a feed page (see :func:`read_all`)."""
    filters: list[str] = []
    params: dict[str, Any] = {"xid": str(after.transaction_id), "position": after.position}
    if categories is not None:
        filters.append("AND category = ANY(%(categories)s)")
        params["categories"] = list(categories)
    if event_types is not None:
        filters.append("AND event_type = ANY(%(event_types)s)")
        params["event_types"] = list(event_types)
    if exclude_streams:
        filters.append("AND stream_id <> ALL(%(exclude)s)")
        params["exclude"] = list(exclude_streams)
    if until is not None:
        filters.append("AND (transaction_id, position) <= (%(until_xid)s::xid8, %(until_pos)s)")
        params.update(until_xid=str(until.transaction_id), until_pos=until.position)
    params["limit"] = max(1, int(limit))
    if buckets is not None and len(buckets) < BUCKETS:
        return _partition_sql(buckets, " ".join(filters)), params
    return _FEED_SQL.replace("{filters}", " ".join(filters)), params


def read_waiting(
    stream_id: str,
    event_types: Sequence[str],
    after: Cursor,
    until: Cursor,
    *,
    using: str = "default",
) -> list[RecordedEvent]:
    """A parked stream's events for a subscriber: of ``event_types``, from ``after``
    (inclusive) to ``until`` (its checkpoint, inclusive), in feed order."""
    with _events_cursor(using) as cursor:
        cursor.execute(
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = %s AND event_type = ANY(%s) "
            "AND (transaction_id, position) >= (%s::xid8, %s) "
            "AND (transaction_id, position) <= (%s::xid8, %s) "
            "ORDER BY events.transaction_id, events.position",
            [stream_id, list(event_types), str(after.transaction_id), after.position,
             str(until.transaction_id), until.position],
        )  # fmt: skip
        rows = cursor.fetchall()
    return _events(rows, personal.keyring(using), keep=True)


def read_category(
    category: str, after: Cursor | None = None, *, limit: int = 500, using: str = "default"
) -> FeedPage:
    """The next page of one category's feed (all streams ``<category>-*``)."""
    return read_all(after, limit=limit, categories=[category], using=using)


def iter_all(
    after: Cursor | None = None, *, page_size: int = 1000, using: str = "default"
) -> Iterator[RecordedEvent]:
    """Every event after ``after`` up to the current horizon, page by page."""
    cursor = after
    while True:
        page = read_all(cursor, limit=page_size, using=using)
        yield from page.events
        if not page.is_full:
            return
        cursor = page.next_cursor
