"""Subscriber status for operators: projection_status, the admin and the API."""

from __future__ import annotations

from typing import Any

from django.db import connection

from eventstore import subscriptions


def subscriber_status() -> list[dict[str, Any]]:
    """One row per registered subscriber (and per orphaned checkpoint), with its lag."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.name, c.kind, c.cursor_position, c.events_processed, c.updated_at, "
            "c.last_event_at, c.error, c.error_position, c.error_count, c.retry_at, "
            f"{subscriptions.LAG_SQL} AS lag FROM checkpoints c ORDER BY c.name"
        )
        columns = [col.name for col in cursor.description]
        found = {row[0]: dict(zip(columns, row, strict=True)) for row in cursor.fetchall()}
    rows = []
    total: int | None = None  # counted only for a subscriber that never ran (a full scan)
    for subscriber in subscriptions.all_subscribers():
        row = found.pop(subscriber.name, None)
        if row is None and total is None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM events")
                total = cursor.fetchone()[0]
        row = row or {
            "name": subscriber.name,
            "cursor_position": 0,
            "events_processed": 0,
            "updated_at": None,
            "last_event_at": None,
            "error": "",
            "error_position": None,
            "error_count": 0,
            "retry_at": None,
            "lag": total,
        }
        row["kind"] = subscriber.kind
        rows.append(row)
    for orphan in found.values():
        orphan["kind"] = f"{orphan['kind']} (not registered)"
        rows.append(orphan)
    for row in rows:
        row["position"] = row.pop("cursor_position")
    return rows
