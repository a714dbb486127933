"""Read the event store: a stream, and the global, category and partition feeds.

The feeds are gap-safe: each event stores the id of the transaction that wrote it, and
readers only read below the oldest transaction still running (``pg_snapshot_xmin``),
ordered by (transaction id, position). An event whose transaction commits late therefore
cannot be skipped, and no writer waits for another.

Personal fields are opened on read (:mod:`eventstore.personal`), with the keys of a whole
stream or page fetched in one query.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from django.db import connections

from eventstore import personal
from eventstore.cursor import Cursor
from eventstore.errors import EventDecodingError, StreamNotFound, UnknownEventType
from eventstore.partitions import BUCKETS
from eventstore.store import category_of
from eventstore.types import registry

logger = logging.getLogger(__name__)
_metadata_encoder = msgspec.json.Encoder(uuid_format="canonical")


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

    Django's loader parses timestamps in Python, a large share of a rebuild's time per
    event, only to attach its time zone; with ``USE_TZ`` it has set the
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
