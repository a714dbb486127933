"""Saga instances in the admin: read-only state, with retry and cancel as actions.

The actions call :mod:`sagas.runner` under the instance's row lock, so an operator's
change and a running step's save cannot cross (the step's save is refused and undone).
Event pages link to the sagas that handled them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from eventstore import subscribers
from eventstore.admin import DistinctValueFilter, Link, ReadOnlyAdmin, related_links
from eventstore.admin_shared import distinct_values, event_url, highlight_json, stream_url
from eventstore.models import Event
from eventstore.subscribers import ProcessManager
from sagas import registry, runner
from sagas.models import SagaInstance

OPERATE = "sagas.change_sagainstance"


class SagaTypeFilter(DistinctValueFilter):
    title = "saga type"
    parameter_name = "saga_type"
    table = "sagas_instance"


@admin.register(SagaInstance)
class SagaInstanceAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "saga_type",
        "correlation_key",
        "status",
        "step",
        "attempts",
        "next_attempt_at",
        "updated_at",
        "short_error",
    ]
    list_filter = ["status", SagaTypeFilter]
    search_fields = ["correlation_key"]  # the search itself is get_search_results
    search_help_text = "An exact correlation key (for a user's saga: the user id)."
    ordering = ["-id"]  # start order, served by the primary key (started_at has no index)
    actions = ["retry", "cancel"]
    fields = [
        "saga_type",
        "correlation_key",
        "stream",
        "status",
        "step",
        "attempts",
        "next_attempt_at",
        "last_error",
        "handled",
        "issued_commands",
        "pretty_data",
        "started_at",
        "updated_at",
        "finished_at",
    ]
    readonly_fields = fields

    @admin.display(description="last error")
    def short_error(self, instance: SagaInstance) -> str:
        return instance.last_error[:80]

    @admin.display(description="stream")
    def stream(self, instance: SagaInstance) -> SafeString | str:
        try:
            stream_of = registry.get(instance.saga_type).subject_stream
        except LookupError:
            stream_of = None
        if stream_of is None:
            return self.get_empty_value_display()
        stream_id = stream_of(instance.correlation_key)
        return format_html('<a href="{}">{}</a>', stream_url(stream_id), stream_id)

    @admin.display(description="handled events")
    def handled(self, instance: SagaInstance) -> SafeString:
        stored = dict(
            Event.objects.filter(event_id__in=instance.handled_events).values_list(
                "event_id", "position"
            )
        )
        positions = {str(event_id): position for event_id, position in stored.items()}
        return format_html_join(
            "",
            '<a href="{}">{}</a><br>',
            (
                (event_url(positions[event_id]), event_id)
                for event_id in instance.handled_events
                if event_id in positions
            ),
        )

    @admin.display(description="data")
    def pretty_data(self, instance: SagaInstance) -> SafeString:
        return highlight_json(instance.data)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Naming every saga type lets the (saga_type, correlation_key) index serve it."""
        term = search_term.strip()
        if not term:
            return queryset, False
        types = distinct_values("sagas_instance", "saga_type")
        return queryset.filter(saga_type__in=types, correlation_key=term), False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE)

    @admin.action(description="Retry the step of the selected sagas now", permissions=["operate"])
    def retry(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._operate(request, queryset, runner.retry, "queued for a retry")

    @admin.action(description="Cancel the selected sagas", permissions=["operate"])
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        reason = f"cancelled by {request.user.get_username()} in the admin"
        self._operate(request, queryset, lambda i: runner.cancel(i, reason=reason), "cancelled")

    def _operate(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        operation: Callable[[SagaInstance], None],
        outcome: str,
    ) -> None:
        done, refused = 0, []
        for pk in queryset.values_list("pk", flat=True):
            with transaction.atomic():
                instance = SagaInstance.objects.select_for_update().get(pk=pk)
                try:
                    operation(instance)
                except ValueError as exc:  # not in a state this operation applies to
                    refused.append(str(exc))
                    continue
            done += 1
        if done:
            self.message_user(request, f"{done} saga(s) {outcome}.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)


def _process_manager_event_types() -> set[str]:
    return {
        event_type
        for subscriber in subscribers.all_subscribers()
        if isinstance(subscriber, ProcessManager)
        for event_type in subscriber.event_types
    }


@related_links(Event)
def sagas_that_handled(request: HttpRequest, event: Any) -> list[Link]:
    """From an event page to the saga instances that handled the event."""
    if not request.user.has_perm("sagas.view_sagainstance"):
        return []
    if event.event_type not in _process_manager_event_types():
        return []  # no saga handles this type: skip the look-up
    instances = SagaInstance.objects.filter(handled_events__contains=[str(event.event_id)])[:10]
    return [
        (f"Saga: {instance}", reverse("admin:sagas_sagainstance_change", args=[instance.pk]))
        for instance in instances
    ]
