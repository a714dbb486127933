"""OpenAPI documentation of the users API: its headers, path parameter, and examples of
every request and response, so the docs show real values rather than placeholders."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse

from eventstore.api_docs import EXAMPLE_EVENT, EXAMPLE_USER_ID

IF_MATCH = OpenApiParameter(
    "If-Match",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description='The ETag you read (e.g. `"3"`): the write happens only if nothing you write '
    "changed after that version, else 412 with `current_version`. Events the service "
    "records for its own bookkeeping (`UserWelcomed`, from the welcome saga) do not "
    "conflict, so the ETag of a create stays usable after the welcome. `*` matches any "
    'version of an existing user. Compared strongly (RFC 9110): a weak `W/"3"` never '
    "matches.",
)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Repeat a POST safely: the same key and body return the first response "
    "and write nothing; the same key with another body is 422.",
)
ETAG = OpenApiParameter(
    "ETag",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    response=[200, 201, 204],
    description='The stream version, quoted ("3"); send it back as If-Match.',
)
LOCATION = OpenApiParameter(
    "Location", {"type": "string", "format": "uri-reference"}, OpenApiParameter.HEADER,
    response=[201], description="Path of the new user (relative to the API's host).",
)  # fmt: skip
CAUGHT_UP = OpenApiParameter(
    "Read-Model-Caught-Up",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    response=[200],
    description="With wait_for: whether the read model reached that position in time.",
)
POSITION = OpenApiParameter(
    "Position", OpenApiTypes.INT, OpenApiParameter.HEADER, response=[204],
    description="Global position of the event the delete recorded.",
)  # fmt: skip
USER_ID = OpenApiParameter(
    "user_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The user's id."
)
CREATE_EXAMPLE = OpenApiExample(
    "New user",
    value={"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"},
    request_only=True,
)


REPLACE_EXAMPLE = OpenApiExample(
    "All fields",
    value={"email": "ada@example.org", "first_name": "Ada", "last_name": "King"},
    request_only=True,
)
PATCH_EXAMPLE = OpenApiExample("One field", value={"last_name": "King"}, request_only=True)

_CREATED_AT = "2026-11-27T12:00:00.123456Z"
USER = {
    "id": EXAMPLE_USER_ID,
    "email": "ada@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "status": "active",
    "welcomed_at": "2026-11-27T12:00:01.204518Z",
    "version": 1,
    "created_at": _CREATED_AT,
    "updated_at": "2026-11-27T12:00:01.204518Z",
}
WRITE_RESULT = {
    "id": EXAMPLE_USER_ID,
    "email": "ada@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "status": "active",
    "welcomed_at": None,
    "version": 0,
    "position": 1042,
}


def ok(serializer: Any, description: str, example: Any) -> OpenApiResponse:
    """A success response with its example."""
    return OpenApiResponse(
        serializer, description=description, examples=[OpenApiExample("Example", value=example)]
    )


USER_PAGE = {
    "count": 1,
    "next": None,
    "previous": None,
    "results": [USER],
}
USER_EVENTS_PAGE = {
    "stream_id": EXAMPLE_EVENT["stream_id"],
    "version": 0,
    "events": [EXAMPLE_EVENT],
    "next_from_version": None,
}
UPDATED = {**WRITE_RESULT, "last_name": "King", "welcomed_at": USER["welcomed_at"], "version": 2,
           "position": 1077}  # fmt: skip

ERASED_RESULT = {
    **WRITE_RESULT,
    "email": "[erased]",
    "first_name": "[erased]",
    "last_name": "[erased]",
    "status": "erased",
    "version": 3,
    "position": 2051,
}
EXPORT = {
    "schema": "user-export/1",
    "exported_at": "2026-12-07T10:15:00+00:00",
    "user_id": EXAMPLE_USER_ID,
    "erased": False,
    "profile": {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace",
                "status": "active", "version": 1},
    "read_model": {"email": "ada@example.com", "status": "active", "version": 1},
    "events": [EXAMPLE_EVENT],
    "sagas": [{"saga_type": "welcome", "status": "completed", "step": "done", "attempts": 0}],
    "emails_sent": [{"sent_at": "2026-12-07T09:00:01+00:00", "template": "sagas/welcome_email",
                     "saga_type": "welcome"}],
    "api_tokens": [],
}  # fmt: skip
