"""Pieces the ModelAdmins of every app share: permissions, links, timestamps, JSON
payloads, a read-only base class, and lists that never count a whole table.

Tables hold millions of events: lists use :class:`EstimatedCountPaginator` and filter
choices come from skip scans of an index (:func:`distinct_values`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.core.exceptions import EmptyResultSet, PermissionDenied
from django.core.paginator import Paginator
from django.db import connection, connections
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

logger = logging.getLogger(__name__)

VIEW_EVENTS = "eventstore.view_event"
EXACT_COUNT_BELOW = 10_000  # a paginator counts exactly when the planner expects fewer rows


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
