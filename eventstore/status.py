"""Subscriber status for operators: projection_status, the admin and the dashboard."""

from __future__ import annotations

from typing import Any

from django.db import connection

from eventstore import parking, progress
from eventstore.cursor import Cursor
from eventstore.models import ParkedStream
from eventstore.subscribers import all_subscribers

_PARTITIONS_SQL = f"""
    SELECT c.name, c.kind, c.partition, c.partitions, c.cursor_transaction_id::text,
           c.cursor_position, c.events_processed, c.updated_at, c.last_event_at,
           {progress.LAG_SQL} AS lag, {progress.LAG_SECONDS_SQL} AS lag_seconds
      FROM checkpoints c ORDER BY c.name, c.partition
"""


def subscriber_status(*, parked_details: bool = False) -> list[dict[str, Any]]:
    """One entry per registered subscriber (and per orphaned set of checkpoints).

    Each has its partitions (cursor, lag in events and seconds, activity), their totals,
    the number of streams it has parked, and a ``state``: ``caught up``, ``behind``,
    ``parked`` (caught up except its parked streams), ``not started`` or
    ``repartition needed``. ``parked_details`` adds the parked streams themselves.
    """
    with connection.cursor() as cursor:
        cursor.execute(_PARTITIONS_SQL)
        columns = [col.name for col in cursor.description]
        found: dict[str, list[dict[str, Any]]] = {}
        for values in cursor.fetchall():
            row = dict(zip(columns, values, strict=True))
            found.setdefault(row["name"], []).append(row)
    parked_by: dict[str, list[ParkedStream]] = {}
    for parked in ParkedStream.objects.order_by("subscriber", "parked_at"):
        parked_by.setdefault(parked.subscriber, []).append(parked)

    entries = []
    registered = {s.name: s for s in all_subscribers()}
    # Counted only for a subscriber that never ran (a full scan): every event, and the age
    # of the oldest, are ahead of it.
    total: tuple[int, float | None] | None = None
    for name in sorted(set(registered) | set(found)):
        subscriber = registered.get(name)
        rows = found.get(name, [])
        kind = subscriber.kind if subscriber else f"{rows[0]['kind']} (not registered)"
        configured = subscriber.partition_count if subscriber else None
        stored = rows[0]["partitions"] if rows else None
        parked = parked_by.get(name, [])
        entry: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "partitions": configured if configured is not None else stored,
            "stored_partitions": stored,
            "partition_rows": [_partition(row, parked) for row in rows],
            "parked": len(parked),
        }
        entry.update(_totals(entry["partition_rows"]))
        if not rows:
            if total is None:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT count(*), extract(epoch FROM now() - min(recorded_at))::float "
                        "FROM events"
                    )
                    total = cursor.fetchone()
            entry["lag"], entry["lag_seconds"] = total
        entry["state"] = _state(entry, configured, stored)
        if parked_details:
            waiting = parking.waiting_counts(subscriber, parked) if subscriber else {}
            entry["parked_streams"] = [
                parking.describe(p, waiting.get(p.stream_id)) for p in parked
            ]
        entries.append(entry)
    return entries


def _partition(row: dict[str, Any], parked: list[ParkedStream]) -> dict[str, Any]:
    cursor = Cursor(int(row["cursor_transaction_id"]), row["cursor_position"])
    return {
        "partition": row["partition"],
        "cursor": f"{cursor.transaction_id} / {cursor.position}",
        "cursor_token": str(cursor),
        "cursor_transaction_id": cursor.transaction_id,
        "cursor_position": cursor.position,
        "lag": row["lag"],
        "lag_seconds": row["lag_seconds"],
        "events_processed": row["events_processed"],
        "updated_at": row["updated_at"],
        "last_event_at": row["last_event_at"],
        "parked": sum(1 for p in parked if p.partition == row["partition"]),
    }


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def latest(key: str) -> Any:
        return max((r[key] for r in rows if r[key] is not None), default=None)

    return {
        "lag": sum(r["lag"] for r in rows) if rows else None,
        "lag_seconds": latest("lag_seconds"),
        "events_processed": sum(r["events_processed"] for r in rows),
        "updated_at": latest("updated_at"),
        "last_event_at": latest("last_event_at"),
    }


def _state(entry: dict[str, Any], configured: int | None, stored: int | None) -> str:
    if stored is None:
        return "not started"
    if configured is not None and configured != stored:
        return "repartition needed"
    if entry["lag"]:
        return "behind"
    return "parked" if entry["parked"] else "caught up"
