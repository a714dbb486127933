"""The staff console's own pages and the pieces the event store's ModelAdmins share.

Pages: the live tail (polls a JSON feed built on the gap-safe ``reads.read_all``) and the
dashboard (events per minute, totals, subscribers needing attention). The subscribers'
pages are in :mod:`eventstore.admin_subscribers`. Everything here reads.

Tables hold millions of events, so nothing here counts a whole table on a page view:
lists use :class:`EstimatedCountPaginator`, filter choices come from skip scans of an
index (:func:`distinct_values`), and dashboard totals switch to the planner's
statistics above :data:`EXACT_TOTALS_BELOW` rows and are cached for a few seconds.
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
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.core.cache import cache
from django.core.exceptions import EmptyResultSet, PermissionDenied
from django.core.paginator import Paginator
from django.db import connection, connections
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from eventstore import reads, status
from eventstore.cursor import Cursor
from eventstore.errors import InvalidCursor

logger = logging.getLogger(__name__)

VIEW_EVENTS = "eventstore.view_event"
VIEW_SUBSCRIBERS = "eventstore.view_checkpoint"
OPERATE_SUBSCRIBERS = "eventstore.change_checkpoint"

TAIL_HISTORY = 25  # events shown when the live tail opens
TAIL_PAGE = 200  # most events one poll returns
DASHBOARD_CACHE_KEY = "eventstore:admin:dashboard"
DASHBOARD_CACHE_SECONDS = 10  # one computation serves every staff browser meanwhile
EXACT_COUNT_BELOW = 10_000  # a paginator counts exactly when the planner expects fewer rows
EXACT_TOTALS_BELOW = 500_000  # dashboard totals come from pg_stats above this
REPLAY_QUEUED_STALE_SECONDS = 600  # a queued replay no worker took may be queued again
_CATEGORY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied


def admin_context(request: HttpRequest, model_admin: Any, title: str) -> dict[str, Any]:
    """What admin templates expect (site header, sidebar, breadcrumbs) for a custom page."""
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
    }


# --- pieces the ModelAdmins use -----------------------------------------------------


_JSON_TOKEN = re.compile(
    r'(?P<key>"(?:[^"\\]|\\.)*"(?=\s*:))'
    r'|(?P<string>"(?:[^"\\]|\\.)*")'
    r"|(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<literal>\b(?:true|false|null)\b)"
)


def highlight_json(value: Any) -> SafeString:
    """Pretty-print ``value`` as JSON with CSS classes per token (no JavaScript, no CDN)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    parts: list[str] = []
    last = 0
    for match in _JSON_TOKEN.finditer(text):
        parts.append(escape(text[last : match.start()]))
        parts.append(f'<span class="json-{match.lastgroup}">{escape(match.group())}</span>')
        last = match.end()
    parts.append(escape(text[last:]))
    return mark_safe(f'<pre class="json">{"".join(parts)}</pre>')  # every part is escaped


class EstimatedCountPaginator(Paginator):
    """Counts exactly only what the planner expects to be small; estimates the rest.

    ``count(*)`` of millions of events on every page would dominate the page time. The
    planner's estimate (``pg_class.reltuples`` scaled, and filter selectivity) costs one
    EXPLAIN; the admin pagination template says "about" when the count is estimated.
    """

    is_estimate = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return len(queryset)
        try:
            sql, params = queryset.query.sql_with_params()
        except EmptyResultSet:  # a filter that matches nothing (pk__in=[]) has no SQL
            return 0
        with connections[queryset.db].cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        estimate = int(plan[0]["Plan"]["Plan Rows"])
        if estimate < EXACT_COUNT_BELOW:
            return queryset.count()
        self.is_estimate = True
        return estimate


def short_stream_link(stream_id: str) -> SafeString:
    """A stream's link as a list shows it: category and the id's first 8 characters
    (enough to tell rows apart; a full UUID would take a list's width), the whole id in
    its tooltip."""
    category, _, rest = stream_id.partition("-")
    shown = f"{category}-{rest[:8]}…" if len(rest) > 12 else stream_id
    return format_html('<a href="{}" title="{}">{}</a>', stream_url(stream_id), stream_id, shown)


def timestamp(value: Any, precise: bool = False) -> str:
    """The admin's one timestamp format (DATETIME_FORMAT: date, time, zone); ``precise``
    adds the microseconds, where the order within a second matters."""
    if value is None:
        return ""
    layout = "Y-m-d H:i:s.u T" if precise else "DATETIME_FORMAT"
    return date_format(timezone.localtime(value), layout)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shows rows and never writes them: no add, change (POSTs refused) or delete, and so
    no history either."""

    actions = None
    paginator = EstimatedCountPaginator
    show_full_result_count = False

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> HttpResponse:
        context["show_history"] = False  # templates/admin/change_form_object_tools.html
        return super().render_change_form(request, context, *args, **kwargs)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        raise Http404("These rows are never edited here, so they have no history.")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def distinct_values(table: str, column: str, limit: int = 200) -> list[str]:
    """Distinct values of an indexed leading column by a skip scan, not a full scan.

    A recursive CTE jumps from one value to the next through the index, so listing the
    few categories or event types of a table of millions of rows takes milliseconds.
    """
    qn = connection.ops.quote_name
    t, c = qn(table), qn(column)
    sql = f"""
        WITH RECURSIVE v(value) AS (
            (SELECT {c} FROM {t} ORDER BY {c} LIMIT 1)
            UNION ALL
            SELECT (SELECT {c} FROM {t} WHERE {c} > v.value ORDER BY {c} LIMIT 1)
            FROM v WHERE v.value IS NOT NULL
        )
        SELECT value FROM v WHERE value IS NOT NULL LIMIT %s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


def parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def event_url(position: int) -> str:
    return reverse("admin:eventstore_event_change", args=[position])


def stream_url(stream_id: str) -> str:
    return reverse("admin:eventstore_stream_change", args=[quote(stream_id)])


def event_search_url(term: str) -> str:
    return f"{reverse('admin:eventstore_event_changelist')}?q={term}"


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
