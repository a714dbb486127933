"""The event admin's own pages: the live tail and the dashboard.

The live tail polls a JSON feed built on the gap-safe ``reads.read_all``; the dashboard
shows events per minute, totals and the subscribers needing attention. Both only read.
Dashboard totals switch to the planner's statistics above :data:`EXACT_TOTALS_BELOW`
rows and are cached for a few seconds, so no page view counts a whole table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import msgspec
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from eventstore import reads, status
from eventstore.admin_shared import (
    VIEW_EVENTS,
    admin_context,
    distinct_values,
    event_url,
    require,
    stream_url,
)
from eventstore.cursor import Cursor
from eventstore.errors import InvalidCursor

logger = logging.getLogger(__name__)

TAIL_HISTORY = 25  # events shown when the live tail opens
TAIL_PAGE = 200  # most events one poll returns
DASHBOARD_CACHE_KEY = "eventstore:admin:dashboard"
DASHBOARD_CACHE_SECONDS = 10  # one computation serves every staff browser meanwhile
EXACT_TOTALS_BELOW = 500_000  # dashboard totals come from pg_stats above this
_CATEGORY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# --- live tail ------------------------------------------------------------------------


def live_tail(request: HttpRequest, model_admin: Any) -> TemplateResponse:
    """New events as they are appended; the page polls :func:`live_tail_feed`."""
    require(request, VIEW_EVENTS)
    context = {
        **admin_context(request, model_admin, "Live tail"),
        "categories": distinct_values("events", "category"),
        "selected": request.GET.get("category", ""),
        "feed_url": reverse("admin:eventstore_event_tail_feed"),
        "poll_ms": 1000,
    }
    return TemplateResponse(request, "admin/eventstore/event/live_tail.html", context)


def live_tail_feed(request: HttpRequest) -> JsonResponse:
    """JSON for the live tail: the last events (no ``after``), then what came after it.

    Polling, not server-sent events: the service runs sync workers, and a stream held
    open per staff browser would take a worker each.
    """
    require(request, VIEW_EVENTS)
    category = request.GET.get("category") or None
    if category is not None and not _CATEGORY.match(category):
        return JsonResponse({"error": "category must look like 'user'"}, status=400)
    after = request.GET.get("after")
    if not after:
        rows, next_cursor = _recent_events(category, TAIL_HISTORY)
    else:
        try:
            cursor = Cursor.parse(after)
        except InvalidCursor as exc:
            return JsonResponse({"error": str(exc)}, status=400)
        page = reads.read_all(
            cursor, limit=TAIL_PAGE, categories=[category] if category else None, lenient=True
        )
        rows = [
            _tail_row(
                e.position,
                e.stream_id,
                e.version,
                e.event_type,
                e.event_id,
                e.metadata,
                e.recorded_at,
                json.dumps(msgspec.to_builtins(e.data), ensure_ascii=False, default=str),
            )
            for e in page.events
        ]
        next_cursor = page.next_cursor
    return JsonResponse({"events": rows, "next_cursor": str(next_cursor)})


# The history and the cursor come from one snapshot: events older than the horizon are
# shown now, the tail continues at the horizon, so none is shown twice or skipped.
_RECENT_SQL = """
    WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
    SELECT h.xmin::text, e.* FROM h LEFT JOIN LATERAL (
        SELECT position, stream_id, version, event_type, event_id, metadata::text,
               recorded_at, schema_version, data::text
        FROM events WHERE transaction_id < h.xmin {filter}
        ORDER BY transaction_id DESC, position DESC LIMIT %(limit)s
    ) e ON true
"""


def _recent_events(category: str | None, limit: int) -> tuple[list[dict[str, Any]], Cursor]:
    sql = _RECENT_SQL.replace("{filter}", "AND category = %(category)s" if category else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, {"limit": limit, "category": category})
        rows = cursor.fetchall()
    horizon = Cursor(int(rows[0][0]), 0)
    events = [
        _tail_row(
            *row[1:6],
            json.loads(row[6]),
            row[7],
            # Personal fields opened, as the tail's later polls (reads.read_all) show them.
            json.dumps(reads.shown_payload(row[4], row[8], row[9]), ensure_ascii=False),
        )
        for row in reversed(rows)
        if row[1] is not None
    ]
    return events, horizon


def _tail_row(
    position: int,
    stream_id: str,
    version: int,
    event_type: str,
    event_id: uuid.UUID,
    metadata: dict[str, Any],
    recorded_at: datetime,
    summary: str,
) -> dict[str, Any]:
    return {
        "position": position,
        "stream_id": stream_id,
        "version": version,
        "event_type": event_type,
        "event_id": str(event_id),
        "recorded_at": recorded_at.isoformat(),
        "actor": metadata.get("actor", ""),
        "correlation_id": metadata.get("correlation_id", ""),
        "summary": summary[:300],
        "event_url": event_url(position),
        "stream_url": stream_url(stream_id),
    }


# --- dashboard ------------------------------------------------------------------------


def dashboard(request: HttpRequest, model_admin: Any) -> TemplateResponse:
    """The dashboard; ``?fragment=1`` returns just its body, which the admin index loads."""
    require(request, VIEW_EVENTS)
    context = {
        **admin_context(request, model_admin, "Event store dashboard"),
        **dashboard_data(),
        "subscribers_url": reverse("admin:eventstore_checkpoint_changelist"),
    }
    template = (
        "eventstore/admin/dashboard_fragment.html"
        if request.GET.get("fragment")
        else "admin/eventstore/event/dashboard.html"
    )
    return TemplateResponse(request, template, context)


def dashboard_data() -> dict[str, Any]:
    """Events per minute over the last hour, totals, and subscribers needing attention."""
    try:
        data = cache.get(DASHBOARD_CACHE_KEY)
    except Exception as exc:  # Redis down: compute it every time rather than fail
        logger.warning("dashboard cache unavailable: %s", exc)
        data = None
    if data is None:
        data = {
            "chart": _events_per_minute(),
            **_totals(),
            "attention": _attention(),
            "computed_at": timezone.now(),
        }
        with contextlib.suppress(Exception):
            cache.set(DASHBOARD_CACHE_KEY, data, DASHBOARD_CACHE_SECONDS)
    return data


DASHBOARD_PARKED_SHOWN = 5  # parked streams listed per subscriber; the rest are counted


def _attention() -> list[dict[str, Any]]:
    """Subscribers not caught up: their lag in events and seconds, and their parked
    streams (the first few, each linked to its timeline)."""
    rows = [
        row for row in status.subscriber_status(parked_details=True) if row["state"] != "caught up"
    ]
    for row in rows:
        parked = row.pop("parked_streams", [])
        row["parked_shown"] = [
            {**p, "url": stream_url(p["stream_id"])} for p in parked[:DASHBOARD_PARKED_SHOWN]
        ]
        row["parked_more"] = max(0, len(parked) - DASHBOARD_PARKED_SHOWN)
    return rows


CHART_WIDTH, CHART_HEIGHT, CHART_MINUTES = 600, 120, 60


def _events_per_minute() -> dict[str, Any]:
    """Bars for an inline SVG, drawn server-side: one per minute of the last hour."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT date_trunc('minute', now())")
        end = cursor.fetchone()[0]
        start = end - timedelta(minutes=CHART_MINUTES - 1)
        cursor.execute(
            "SELECT date_trunc('minute', recorded_at), count(*) FROM events "
            "WHERE recorded_at >= %s GROUP BY 1",
            [start],
        )
        counts = dict(cursor.fetchall())
    minutes = [start + timedelta(minutes=i) for i in range(CHART_MINUTES)]
    peak = max(counts.values(), default=0)
    step = CHART_WIDTH / CHART_MINUTES
    bars = []
    for index, minute in enumerate(minutes):
        count = counts.get(minute, 0)
        height = round(count / peak * (CHART_HEIGHT - 20), 1) if peak else 0
        bars.append(
            {
                "x": round(index * step, 1),
                "y": round(CHART_HEIGHT - height, 1),
                "width": round(step - 2, 1),
                "height": height,
                "count": count,
                "minute": minute,
            }
        )
    return {
        "bars": bars,
        "peak": peak,
        "total": sum(counts.values()),
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
    }


def _totals() -> dict[str, Any]:
    """Events per category and per type: exact on small tables, else from pg_stats."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'events'::regclass")
        estimate = cursor.fetchone()[0]
        if estimate < EXACT_TOTALS_BELOW:
            by = {}
            for column in ("category", "event_type"):
                # Each GROUP BY can be an index-only scan of the category / type index.
                cursor.execute(
                    f"SELECT {column}, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC, 1"
                )
                by[column] = cursor.fetchall()
            return {"by_category": by["category"], "by_type": by["event_type"], "approx": False}
        by = {}
        for column in ("category", "event_type"):
            cursor.execute(
                "SELECT most_common_vals::text::text[], most_common_freqs FROM pg_stats "
                "WHERE schemaname = current_schema() AND tablename = 'events' AND attname = %s",
                [column],
            )
            row = cursor.fetchone()
            pairs = zip(*row, strict=True) if row and row[0] else []
            by[column] = sorted(
                ((value, round(freq * estimate)) for value, freq in pairs),
                key=lambda pair: -pair[1],
            )
    return {"by_category": by["category"], "by_type": by["event_type"], "approx": True}
