"""Subscribers in the admin: their partitions and lag, parked streams, replays.

Operators retry parked streams (after a fix), skip a parked stream's first event with a
reason, and replay projections (after confirming). Each operation goes through
:mod:`eventstore.operations` or a Celery task, which take the engine's own locks.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from eventstore import operations, parking, status, subscribers, wakeups
from eventstore.admin_shared import (
    ReadOnlyAdmin,
    admin_context,
    event_url,
    require,
    stream_url,
    timestamp,
)
from eventstore.models import Checkpoint, ParkedStream, SkippedEvent
from eventstore.subscribers import Projection
from eventstore.tasks import replay_progress_key, replay_projection, report_replay

logger = logging.getLogger(__name__)

VIEW_SUBSCRIBERS = "eventstore.view_checkpoint"
OPERATE_SUBSCRIBERS = "eventstore.change_checkpoint"
REPLAY_QUEUED_STALE_SECONDS = 600  # a queued replay no worker took may be queued again


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    """Subscribers. The list is every registered subscriber, with or without a row yet."""

    fields = ["name", "partition", "partitions", "kind", "cursor_transaction_id",
              "cursor_position", "events_processed", "updated_at", "last_event_at",
              "wake_requested"]  # fmt: skip
    readonly_fields = fields

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return subscribers_page(request, self)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<str:name>/retry/", view(retry_view), name="eventstore_checkpoint_retry"),
            path("<str:name>/replay/", view(self.replay_view), name="eventstore_checkpoint_replay"),
            *super().get_urls(),
        ]

    def replay_view(self, request: HttpRequest, name: str) -> HttpResponse:
        return replay_view(request, self, name)


def subscribers_page(request: HttpRequest, model_admin: Any) -> TemplateResponse:
    """Every projection and process manager: partitions, lag, parked streams, replays."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    rows = status.subscriber_status()
    replays = replay_states()
    parked_url = reverse("admin:eventstore_parkedstream_changelist")
    for row in rows:
        subscriber = _registered(row["name"])
        row["replayable"] = isinstance(subscriber, Projection) and bool(subscriber.read_models)
        row["registered"] = subscriber is not None
        row["replay"] = replays.get(row["name"])
        row["parked_url"] = f"{parked_url}?subscriber={row['name']}"
    context = {
        **admin_context(request, model_admin, "Subscribers"),
        "rows": rows,
        "can_operate": request.user.has_perm(OPERATE_SUBSCRIBERS),
        "poll_ms": 1000,
    }
    return TemplateResponse(request, "admin/eventstore/checkpoint/subscribers.html", context)


def _registered(name: str) -> subscribers.Subscriber | None:
    try:
        return subscribers.get(name)
    except LookupError:
        return None


def _subscriber_or_404(name: str) -> subscribers.Subscriber:
    subscriber = _registered(name)
    if subscriber is None:
        raise Http404(f"no subscriber named {name!r}")
    return subscriber


def _back_to_subscribers() -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("admin:eventstore_checkpoint_changelist"))


def retry_view(request: HttpRequest, name: str) -> HttpResponse:
    """POST: retry every stream the subscriber parked, then queue a catch-up of each
    partition."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    require(request, OPERATE_SUBSCRIBERS)
    subscriber = _subscriber_or_404(name)
    done, left = operations.retry_all_parked(subscriber.name)
    wakeups.wake([(p.name, p.number) for p in subscribers.partitions_of(subscriber)])
    if left:
        messages.warning(request, f"{name}: {done} parked stream(s) handled, {left} still fail.")
    else:
        messages.success(request, f"{name}: {done} parked stream(s) handled; catch-up queued.")
    return _back_to_subscribers()


def replay_states() -> dict[str, dict[str, Any]]:
    """The last known replay of each subscriber; none while the cache is unreachable."""
    keys = {replay_progress_key(s.name): s.name for s in subscribers.all_subscribers()}
    try:
        found = cache.get_many(list(keys))
    except Exception as exc:  # the page is most needed during an outage: show the rest
        logger.warning("replay progress unavailable: %s", exc)
        return {}
    return {keys[key]: progress for key, progress in found.items()}


def replay_view(request: HttpRequest, model_admin: Any, name: str) -> HttpResponse:
    """GET: the replay's progress as JSON (the page polls it). POST: a confirmation page;
    POST with ``confirmed``: start the replay."""
    if request.method not in ("GET", "POST"):
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    require(request, VIEW_SUBSCRIBERS if request.method == "GET" else OPERATE_SUBSCRIBERS)
    subscriber = _subscriber_or_404(name)
    if request.method == "GET":
        return JsonResponse({"name": name, "replay": replay_states().get(name)})
    if not isinstance(subscriber, Projection) or not subscriber.read_models:
        messages.error(request, f"{name} is not a projection with read models; it cannot replay.")
        return _back_to_subscribers()
    if request.POST.get("confirmed") != "yes":
        context = {
            **admin_context(request, model_admin, f"Replay {name}?"),
            "subscriber": subscriber,
            "tables": [model._meta.db_table for model in subscriber.read_models],
        }
        return TemplateResponse(request, "admin/eventstore/checkpoint/replay_confirm.html", context)
    current = replay_states().get(name) or {}
    if _replay_active(current):
        messages.warning(request, f"A replay of {name} is already {current['state']}.")
        return _back_to_subscribers()
    now = timezone.now().isoformat()
    report_replay(name, {"state": "queued", "done": 0, "queued_at": now, "updated_at": now})
    try:
        replay_projection.delay(name)
    except Exception as exc:  # the broker is down
        report_replay(name, {"state": "failed", "error": f"could not queue: {exc}", "done": 0})
        messages.error(request, f"Could not queue the replay of {name}: {exc}")
        return _back_to_subscribers()
    messages.success(request, f"Replay of {name} queued; progress shows below.")
    return _back_to_subscribers()


def _replay_active(progress: dict[str, Any]) -> bool:
    """Queued or running, and heard of recently (a dead worker does not block forever)."""
    if progress.get("state") not in ("queued", "running"):
        return False
    updated = datetime.fromisoformat(progress["updated_at"])
    return timezone.now() - updated < timedelta(seconds=REPLAY_QUEUED_STALE_SECONDS)


# --- parked streams ---------------------------------------------------------------------


class SkipForm(forms.Form):
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Recorded with your name and the time.",
    )


class SubscriberFilter(admin.SimpleListFilter):
    title = "subscriber"
    parameter_name = "subscriber"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(s.name, s.name) for s in subscribers.all_subscribers()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(subscriber=self.value()) if self.value() else queryset


@admin.register(ParkedStream)
class ParkedStreamAdmin(ReadOnlyAdmin):
    """Streams set aside by a subscriber: the error, the first waiting event, the count."""

    list_display = ["stream", "subscriber", "partition", "first_event", "short_error",
                    "attempts", "next_retry", "parked_at"]  # fmt: skip
    list_filter = [SubscriberFilter]
    search_fields = ["=stream_id"]
    search_help_text = "An exact stream id."
    actions = ["retry", "skip_first"]
    fields = ["subscriber", "partition", "stream", "first_event", "event_type", "version",
              "error", "attempts", "retry_at", "parked_at", "updated_at"]  # fmt: skip
    readonly_fields = fields

    @admin.display(description="stream", ordering="stream_id")
    def stream(self, parked: ParkedStream) -> str:
        return format_html('<a href="{}">{}</a>', stream_url(parked.stream_id), parked.stream_id)

    @admin.display(description="first waiting event")
    def first_event(self, parked: ParkedStream) -> str:
        return format_html(
            '<a href="{}">{} v{}</a>',
            event_url(parked.cursor_position),
            parked.event_type,
            parked.version,
        )

    @admin.display(description="error")
    def short_error(self, parked: ParkedStream) -> str:
        return parked.error[:120]

    @admin.display(description="next retry", ordering="retry_at")
    def next_retry(self, parked: ParkedStream) -> str:
        return timestamp(parked.retry_at) if parked.retry_at else "an operator"

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE_SUBSCRIBERS)

    @admin.action(description="Retry the selected streams now", permissions=["operate"])
    def retry(self, request: HttpRequest, queryset: QuerySet) -> None:
        for parked in queryset:
            handled = operations.retry_parked(parked.subscriber, parked.stream_id)
            if handled:
                messages.success(request, f"{parked.stream_id}: handled again.")
            else:
                still = ParkedStream.objects.get(pk=parked.pk)
                messages.warning(request, f"{parked.stream_id}: still fails: {still.error}")

    @admin.action(
        description="Skip the first waiting event of the selected streams…",
        permissions=["operate"],
    )
    def skip_first(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        form = SkipForm(request.POST if "reason" in request.POST else None)
        if not form.is_valid():
            waiting = {}
            for parked in queryset:
                subscriber = _registered(parked.subscriber)
                if subscriber is not None:
                    waiting.update(parking.waiting_counts(subscriber, [parked]))
            context = {
                **admin_context(request, self, "Skip the first waiting event"),
                "form": form,
                "parked": [(p, waiting.get(p.stream_id)) for p in queryset],
                "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
            }
            return TemplateResponse(request, "admin/eventstore/parkedstream/skip.html", context)
        actor = f"{request.user.get_username()} (admin)"
        for parked in queryset:
            handled = operations.skip_parked(
                parked.subscriber, parked.stream_id, reason=form.cleaned_data["reason"], actor=actor
            )
            verdict = "handled again" if handled else "still parked at its next event"
            messages.info(
                request, f"{parked.stream_id}: event v{parked.version} skipped; {verdict}."
            )
        return None


@admin.register(SkippedEvent)
class SkippedEventAdmin(ReadOnlyAdmin):
    """Events operators told a subscriber to skip: the record of who, when and why."""

    list_display = ["stream_id", "version", "event_type", "subscriber", "reason", "skipped_by",
                    "skipped_at"]  # fmt: skip
    list_filter = [SubscriberFilter]
    search_fields = ["=stream_id"]
    fields = ["subscriber", "stream_id", "event_id", "event_type", "version", "position",
              "error", "reason", "skipped_by", "skipped_at"]  # fmt: skip
    readonly_fields = fields
