"""The event store in the Django admin: streams, the global event feed, subscribers.

Read-only throughout: events and streams cannot be added, changed or deleted here, not
even by a superuser (the events table refuses it anyway). What staff may do to
subscribers goes through the engine (:mod:`eventstore.admin_views`). Other apps add
links to event and stream pages with :func:`related_links`, so this app imports none.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import Model, Q, QuerySet
from django.db.models.fields.json import KT
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils.html import format_html
from django.utils.safestring import SafeString

from eventstore import admin_shared, admin_views, personal, reads
from eventstore.admin_shared import (
    ReadOnlyAdmin,
    distinct_values,
    event_search_url,
    event_url,
    highlight_json,
    parse_uuid,
    short_stream_link,
    stream_url,
    timestamp,
)
from eventstore.models import Event, Stream

Link = tuple[str, str]  # (label, url)
LinkProvider = Callable[[HttpRequest, Any], Iterable[Link]]
_link_providers: dict[type[Model], list[LinkProvider]] = defaultdict(list)

TIMELINE_PAGE = 50
CAUSED_SHOWN = 50


def related_links(model: type[Model]) -> Callable[[LinkProvider], LinkProvider]:
    """Register ``provider(request, obj)`` to add links to the admin page of an Event or
    Stream (the saga that handled an event, the read-model row of a stream)."""

    def register(provider: LinkProvider) -> LinkProvider:
        _link_providers[model].append(provider)
        return provider

    return register


def links_for(request: HttpRequest, obj: Model) -> list[Link]:
    return [link for provider in _link_providers[type(obj)] for link in provider(request, obj)]


class DistinctValueFilter(admin.SimpleListFilter):
    """Choices from a skip scan of the column's index, never a scan of the table."""

    table: str

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value) for value in distinct_values(self.table, self.parameter_name)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(**{self.parameter_name: value}) if value else queryset


class EventCategoryFilter(DistinctValueFilter):
    title = "category"
    parameter_name = "category"
    table = "events"


class EventTypeFilter(DistinctValueFilter):
    title = "type"
    parameter_name = "event_type"
    table = "events"


class StreamCategoryFilter(DistinctValueFilter):
    title = "category"
    parameter_name = "category"
    table = "streams"


@admin.register(Stream)
class StreamAdmin(ReadOnlyAdmin):
    list_display = ["stream_id", "category", "version", "event_count", "created_at", "updated_at"]
    list_filter = [StreamCategoryFilter]
    search_fields = ["stream_id"]
    search_help_text = "A stream id, or its beginning (user-3f2c…)."
    fields = ["stream_id", "category", "version", "event_count", "created_at", "updated_at"]
    readonly_fields = fields

    @admin.display(description="events")
    def event_count(self, stream: Stream) -> int:
        return stream.version + 1  # versions run from 0 without gaps

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        return (queryset.filter(stream_id__startswith=term) if term else queryset), False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        stream = self.get_object(request, unquote(object_id))
        context = {}
        if stream is not None and self.has_view_permission(request, stream):
            context = {**self.timeline(request, stream), "links": links_for(request, stream)}
        return super().change_view(
            request, object_id, form_url, {**context, **(extra_context or {})}
        )

    def timeline(self, request: HttpRequest, stream: Stream) -> dict[str, Any]:
        """The stream's events, oldest first, a page at a time (``?from_version=``)."""
        if not request.user.has_perm(admin_shared.VIEW_EVENTS):
            return {"timeline_hidden": True}
        try:
            start = max(0, int(request.GET.get("from_version", 0)))
        except ValueError:
            start = 0
        events = list(
            Event.objects.filter(stream_id=stream.stream_id, version__gte=start).order_by(
                "version"
            )[: TIMELINE_PAGE + 1]
        )
        more, events = len(events) > TIMELINE_PAGE, events[:TIMELINE_PAGE]
        cause_ids = [parse_uuid(str(e.metadata.get("causation_id"))) for e in events]
        causes = {
            str(event_id): position
            for event_id, position in Event.objects.filter(
                event_id__in=[cause_id for cause_id in cause_ids if cause_id]
            ).values_list("event_id", "position")
        }
        items = []
        with personal.key_scope():  # one key fetch for the page
            shown = [reads.shown_payload(e.event_type, e.schema_version, e.data) for e in events]
        for event, data in zip(events, shown, strict=True):
            correlation = event.metadata.get("correlation_id")
            causation = event.metadata.get("causation_id")
            items.append(
                {
                    "event": event,
                    "url": event_url(event.position),
                    "actor": event.metadata.get("actor", ""),
                    "correlation_id": correlation,
                    "correlation_url": event_search_url(correlation) if correlation else None,
                    "causation_id": causation,
                    "causation_url": event_url(causes[causation]) if causation in causes else None,
                    "data": highlight_json(data),
                }
            )
        return {
            "timeline": items,
            "from_version": start,
            "older_from": max(0, start - TIMELINE_PAGE) if start else None,
            "newer_from": start + TIMELINE_PAGE if more else None,
        }


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = [
        "position",
        "stream_short",
        "version",
        "event_type",
        "recorded",
        "actor",
        "correlation",
    ]
    list_filter = [EventCategoryFilter, EventTypeFilter, ("recorded_at", admin.DateFieldListFilter)]
    search_fields = ["stream_id"]  # the search itself is get_search_results
    search_help_text = (
        "An exact stream id, event id, correlation id or position; a bare id finds the "
        "streams <category>-<id> too."
    )
    ordering = ["-position"]
    list_per_page = 50
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "position",
                    "stream_link",
                    "version",
                    "event_type",
                    "schema_version",
                    "event_id",
                    "recorded_precisely",
                    "transaction_id",
                ]
            },
        ),
        ("Data", {"fields": ["pretty_data"]}),
        ("Metadata", {"fields": ["pretty_metadata"]}),
    ]
    readonly_fields = [
        "position",
        "stream_link",
        "version",
        "event_type",
        "schema_version",
        "event_id",
        "recorded_precisely",
        "transaction_id",
        "pretty_data",
        "pretty_metadata",
    ]

    @admin.display(description="stream", ordering="stream_id")
    def stream_link(self, event: Event) -> SafeString:
        return format_html('<a href="{}">{}</a>', stream_url(event.stream_id), event.stream_id)

    @admin.display(description="stream", ordering="stream_id")
    def stream_short(self, event: Event) -> SafeString:
        return short_stream_link(event.stream_id)

    @admin.display(description="recorded at", ordering="recorded_at")
    def recorded(self, event: Event) -> str:
        return timestamp(event.recorded_at)

    @admin.display(description="recorded at")
    def recorded_precisely(self, event: Event) -> str:
        # To the microsecond: what happened within one second is often the question.
        return timestamp(event.recorded_at, precise=True)

    @admin.display(description="actor")
    def actor(self, event: Event) -> str:
        return event.metadata.get("actor", "")

    @admin.display(description="correlation")
    def correlation(self, event: Event) -> SafeString | str:
        correlation = event.metadata.get("correlation_id")
        if not correlation:
            return ""
        return format_html(
            '<a href="{}" title="{}">{}…</a>',
            event_search_url(correlation),
            correlation,
            correlation[:8],
        )

    @admin.display(description="data")
    def pretty_data(self, event: Event) -> SafeString:
        data = reads.shown_payload(event.event_type, event.schema_version, event.data)
        return highlight_json(data)

    @admin.display(description="metadata")
    def pretty_metadata(self, event: Event) -> SafeString:
        return highlight_json(event.metadata)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Exact matches only, each served by an index (a LIKE would scan millions)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(stream_id=term)
        if term.isdigit() and len(term) < 19:
            match |= Q(position=int(term))
        if (as_uuid := parse_uuid(term)) is not None:
            queryset = queryset.annotate(correlation_key=KT("metadata__correlation_id"))
            streams = [f"{category}-{term}" for category in distinct_values("streams", "category")]
            match |= (
                Q(event_id=as_uuid) | Q(correlation_key=str(as_uuid)) | Q(stream_id__in=streams)
            )
        return queryset.filter(match), False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        event = self.get_object(request, unquote(object_id))
        context = {}
        if event is not None and self.has_view_permission(request, event):
            context = self.causality(request, event)
        return super().change_view(
            request, object_id, form_url, {**context, **(extra_context or {})}
        )

    def causality(self, request: HttpRequest, event: Event) -> dict[str, Any]:
        """What caused this event, what it caused, its conversation, and related pages."""
        correlation = event.metadata.get("correlation_id")
        causation = event.metadata.get("causation_id")
        cause_id = parse_uuid(str(causation))
        cause = (
            Event.objects.filter(event_id=cause_id).only("position", "event_type").first()
            if cause_id and cause_id != event.event_id
            else None
        )
        caused = list(
            Event.objects.annotate(causation_key=KT("metadata__causation_id"))
            .filter(causation_key=str(event.event_id))
            .only("position", "stream_id", "version", "event_type")
            .order_by("position")[:CAUSED_SHOWN]
        )
        return {
            "correlation_id": correlation,
            "correlation_url": event_search_url(correlation) if correlation else None,
            "causation_id": causation,
            "cause": cause,
            "cause_url": event_url(cause.position) if cause else None,
            "caused": [(e, event_url(e.position)) for e in caused],
            "caused_more": len(caused) == CAUSED_SHOWN,
            "links": links_for(request, event),
        }

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("tail/", view(self.live_tail_view), name="eventstore_event_tail"),
            path("tail/feed/", view(admin_views.live_tail_feed), name="eventstore_event_tail_feed"),
            path("dashboard/", view(self.dashboard_view), name="eventstore_event_dashboard"),
            *super().get_urls(),
        ]

    def live_tail_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.live_tail(request, self)

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.dashboard(request, self)


# The subscribers' pages (checkpoints, parked streams) register themselves there.
from eventstore import admin_subscribers  # noqa: E402,F401
