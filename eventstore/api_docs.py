"""OpenAPI documentation the API views share: the problem responses (RFC 9457), with the
statuses each operation can really answer and an example of each, and example events.

Views list their statuses (``problem_responses(400, 401, 404)``), so the schema says what
a client must handle, not every status the service knows.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, inline_serializer
from rest_framework import serializers

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_BASE = "https://users.example/problems/"

ProblemSerializer = inline_serializer(
    "Problem",
    {
        "type": serializers.URLField(help_text="Identifies the kind of problem."),
        "title": serializers.CharField(help_text="The status in words."),
        "status": serializers.IntegerField(help_text="The HTTP status code."),
        "detail": serializers.CharField(help_text="What went wrong, and what to do about it."),
        "errors": serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()),
            required=False,
            help_text="With 400: each invalid field (or parameter, or header) and why.",
        ),
        "current_version": serializers.IntegerField(
            required=False, help_text="With 412: the resource's version now (its ETag)."
        ),
    },
)

# status: (description, slug, title, detail, extra members of the example)
_PROBLEMS: dict[int, tuple[str, str, str, str, dict[str, Any]]] = {
    400: (
        "Invalid input; `errors` names each field and what to fix.",
        "bad-request",
        "Bad request",
        "Some fields are invalid; see errors.",
        {"errors": {"email": ["Enter a valid email address, like ada@example.com."]}},
    ),
    401: (
        "No or invalid credentials (see WWW-Authenticate).",
        "not-authenticated",
        "Not authenticated",
        "Authentication credentials were not provided.",
        {},
    ),
    403: (
        "Authenticated, but not allowed (a read-only token writing; staff without the "
        "event permission; a session write without its CSRF token).",
        "forbidden",
        "Forbidden",
        "This API token is read-only: it may read (GET), not write.",
        {},
    ),
    404: (
        "No such resource.",
        "not-found",
        "Not found",
        "user 3f2c9a4e-8b1d-4c6f-9e2a-7d5b1c0f4a83 does not exist",
        {},
    ),
    409: (
        "Conflicts with the current state: an email in use, an id that exists, a deleted "
        "user, or a race lost three times.",
        "conflict",
        "Conflict",
        "the email address ada@example.com belongs to another user",
        {},
    ),
    412: (
        "If-Match names a version that changed since (events the service records for its "
        "own bookkeeping, like UserWelcomed, do not count), or a weak ETag; "
        "`current_version` says where the user is.",
        "precondition-failed",
        "Precondition failed",
        "The user changed after version 0 (it is at version 2); reload it and retry.",
        {"current_version": 2},
    ),
    413: (
        "Request body over the size limit (64 KiB by default).",
        "too-large",
        "Request body too large",
        "The request body is 70144 bytes; the limit is 65536.",
        {},
    ),
    415: (
        "The body is not application/json.",
        "unsupported-media-type",
        "Unsupported media type",
        'Unsupported media type "text/plain" in request.',
        {},
    ),
    422: (
        "Idempotency-Key reused with a different request.",
        "unprocessable",
        "Unprocessable content",
        "This Idempotency-Key was used with a different request; use a new key.",
        {},
    ),
    429: (
        "Too many requests; Retry-After says when to try again.",
        "throttled",
        "Too many requests",
        "Request was throttled. Expected available in 37 seconds.",
        {},
    ),
    503: (
        "The database is unavailable; retry shortly.",
        "unavailable",
        "Service unavailable",
        "The database is unavailable; retry shortly.",
        {},
    ),
}


def _problem_response(status: int) -> OpenApiResponse:
    description, slug, title, detail, extra = _PROBLEMS[status]
    example = {
        "type": _TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return OpenApiResponse(
        ProblemSerializer,
        description=description,
        examples=[OpenApiExample(title, value=example, media_type=PROBLEM_MEDIA_TYPE)],
    )


def problem_responses(*statuses: int) -> dict[tuple[int, str], OpenApiResponse]:
    """The problem responses an operation can give, keyed as drf-spectacular wants them
    for a media type of their own (problem+json, not the operation's JSON)."""
    return {(status, PROBLEM_MEDIA_TYPE): _problem_response(status) for status in statuses}


EXAMPLE_USER_ID = "3f2c9a4e-8b1d-4c6f-9e2a-7d5b1c0f4a83"
EXAMPLE_EVENT = {
    "position": 1042,
    "stream_id": f"user-{EXAMPLE_USER_ID}",
    "version": 0,
    "event_id": "0b8e6f52-1d7a-4b0e-93c4-5a2f7e9d6c11",
    "event_type": "UserCreated",
    "data": {
        "user_id": EXAMPLE_USER_ID,
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
    },
    "metadata": {
        "actor": "user:alice",
        "correlation_id": "9a1d3c5e-7f2b-4e6d-8c0a-1b3d5f7a9c2e",
        "causation_id": "9a1d3c5e-7f2b-4e6d-8c0a-1b3d5f7a9c2e",
        "command_id": "9a1d3c5e-7f2b-4e6d-8c0a-1b3d5f7a9c2e",
    },
    "recorded_at": "2026-11-27T12:00:00.123456+00:00",
}
