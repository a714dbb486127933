"""The users context in the admin: the read model (read-only, each row linked to its
event stream) and the API tokens (listed and revoked here, issued by a command).

Rows are written only by the users projection; a change to a user is a command (the
API), never an edit here. The stream page links back to the row.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from eventstore.admin import Link, ReadOnlyAdmin, related_links, short_stream_link
from eventstore.admin_shared import parse_uuid, stream_url
from eventstore.models import Stream
from users import rules
from users.models import ApiToken, UserRecord


@admin.register(UserRecord)
class UserRecordAdmin(ReadOnlyAdmin):
    # What fits a 1366-pixel screen; the row's page has every field.
    list_display = ["email", "name", "status", "welcomed", "created_at", "stream_short"]
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

    @admin.display(description="stream")
    def stream_short(self, user: UserRecord) -> SafeString:
        return short_stream_link(user.stream_id)

    @admin.display(description="name", ordering="last_name")
    def name(self, user: UserRecord) -> str:
        return f"{user.first_name} {user.last_name}"

    @admin.display(description="welcomed", boolean=True, ordering="welcomed_at")
    def welcomed(self, user: UserRecord) -> bool:
        return user.welcomed_at is not None

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


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens by prefix and owner; revoking one deletes it (only its hash was stored).

    No add page: ``manage.py create_api_token`` prints a new token once, which a form
    could not do safely. Nothing about a token is edited; a different one is a new token.
    """

    list_display = [
        "prefix",
        "name",
        "user",
        "scope",
        "created_at",
        "last_used_at",
        "expires_at",
        "state",
    ]
    list_filter = ["scope", ("expires_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "user__username"]
    search_help_text = "A token's first characters, its name, or its owner's username."
    list_select_related = ["user"]
    fields = ["prefix", "name", "user", "scope", "created_at", "last_used_at", "expires_at"]
    readonly_fields = fields
    actions = ["revoke"]

    @admin.display(description="state")
    def state(self, token: ApiToken) -> str:
        if token.expires_at is not None and token.expires_at <= timezone.now():
            return "expired"
        return "active" if token.user.is_active else "owner inactive"

    @admin.action(description="Revoke the selected tokens", permissions=["delete"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        # One by one, so each deletion tells this process to forget the token at once.
        count = 0
        for token in queryset:
            token.delete()
            count += 1
        self.message_user(
            request,
            f"Revoked {count} token(s): refused at once by this process, by the others "
            f"within API_TOKEN_CACHE_SECONDS ({settings.API_TOKEN_CACHE_SECONDS:g} s).",
        )

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # "revoke" says what deleting a token means
        return actions

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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
