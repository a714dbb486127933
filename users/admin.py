"""The users read model in the admin: read-only, each row linked to its event stream.

Rows are written only by the users projection; a change to a user is a command (the
API), never an edit here. The stream page links back to the row.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from eventstore.admin import Link, ReadOnlyAdmin, related_links
from eventstore.admin_views import parse_uuid, stream_url
from eventstore.models import Stream
from users import rules
from users.models import UserRecord


@admin.register(UserRecord)
class UserRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "email",
        "first_name",
        "last_name",
        "status",
        "welcomed_at",
        "version",
        "created_at",
        "stream_link",
    ]
    list_filter = ["status", ("welcomed_at", admin.EmptyFieldListFilter)]
    search_fields = ["email"]  # the search itself is get_search_results
    search_help_text = "An exact email, user id or last name."
    fields = [
        "id",
        "stream_link",
        "email",
        "first_name",
        "last_name",
        "status",
        "welcomed_at",
        "version",
        "last_position",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields

    @admin.display(description="stream")
    def stream_link(self, user: UserRecord) -> SafeString:
        return format_html('<a href="{}">{}</a>', stream_url(user.stream_id), user.stream_id)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Exact matches on indexed columns (emails are stored lower-cased)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if (user_id := parse_uuid(term)) is not None:
            return queryset.filter(id=user_id), False
        if "@" in term:
            return queryset.filter(email=rules.canonical_email(term) or term.lower()), False
        return queryset.filter(last_name=term), False


@related_links(Stream)
def user_of_stream(request: HttpRequest, stream: Any) -> list[Link]:
    """From a ``user-<id>`` stream page to the user's read-model row."""
    if stream.category != "user" or not request.user.has_perm("users.view_userrecord"):
        return []
    user_id = parse_uuid(stream.stream_id.split("-", 1)[1])
    user = UserRecord.objects.filter(id=user_id).first() if user_id else None
    if user is None:
        return []
    url = reverse("admin:users_userrecord_change", args=[user.pk])
    return [(f"User (read model): {user}", url)]
