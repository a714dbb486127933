"""HTTP pieces of the event store: the staff event feed, stream pages, and helpers that
API views of any context share (metadata context, If-Match, event JSON, error docs)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from eventstore import reads, store
from eventstore.api_docs import EXAMPLE_EVENT, problem_responses
from eventstore.context import MessageContext, message_context
from eventstore.cursor import Cursor
from eventstore.errors import InvalidAppend, InvalidCursor
from eventstore.reads import RecordedEvent

CORRELATION_HEADER = "X-Correlation-ID"


@contextlib.contextmanager
def command_context(request: Request) -> Iterator[MessageContext]:
    """Metadata for the events a request causes: who, and which conversation.

    The conversation is ``request.correlation_id`` when a middleware set it (from the
    client's header, or a new one it echoes), else the header itself, else the command.
    """
    correlation = getattr(request, "correlation_id", None)
    raw = request.headers.get(CORRELATION_HEADER)
    if correlation is None and raw:
        try:
            correlation = uuid.UUID(raw)
        except ValueError:
            raise ValidationError(
                {CORRELATION_HEADER: ["Must be a UUID, or leave the header out."]}
            ) from None
    user = request.user
    actor = f"user:{user.get_username()}" if user and user.is_authenticated else "anonymous"
    command_id = uuid.uuid4()
    with message_context(
        actor=actor, correlation_id=correlation or command_id, command_id=command_id
    ) as context:
        yield context


@dataclass(frozen=True)
class IfMatch:
    """An ``If-Match`` header: ``*`` (any current version), or the versions its strong
    ETags name. Weak ETags (``W/"3"``) are left out: RFC 9110 compares If-Match strongly,
    so a weak one matches nothing, and a header of weak ones only matches no version."""

    any: bool
    versions: tuple[int, ...]


def parse_if_match(request: Request) -> IfMatch | None:
    """The ``If-Match`` header (``"3"``, ``"2", "3"``, ``*``), or None if absent."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    if raw.strip() == "*":
        return IfMatch(any=True, versions=())
    versions = []
    for tag in raw.split(","):
        value = tag.strip()
        weak = value.startswith("W/")
        value = value.removeprefix("W/").strip('"')
        if not value.isdigit() or len(value) > 9:
            raise ValidationError(
                {
                    "If-Match": [
                        f'{raw!r} is not an ETag of this API; send the ETag you read, e.g. "3", '
                        "or * for any version."
                    ]
                }
            )
        if not weak:
            versions.append(int(value))
    return IfMatch(any=False, versions=tuple(versions))


def serialize_event(event: RecordedEvent) -> dict[str, Any]:
    return {
        "position": event.position,
        "stream_id": event.stream_id,
        "version": event.version,
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "data": msgspec.to_builtins(event.data),
        "metadata": event.metadata,
        "recorded_at": event.recorded_at.isoformat(),
    }


def reject_blank_parameters(serializer: serializers.Serializer) -> None:
    """``?type=`` is an error, not "no filter": DRF reads a blank query value as absent."""
    blank = [name for name in serializer.fields if serializer.initial_data.get(name) == ""]
    if blank:
        raise ValidationError(
            {name: ["Give a value, or leave the parameter out."] for name in sorted(blank)}
        )


class EventSerializer(serializers.Serializer):
    position = serializers.IntegerField()
    stream_id = serializers.CharField()
    version = serializers.IntegerField()
    event_id = serializers.UUIDField()
    event_type = serializers.CharField()
    data = serializers.DictField()
    metadata = serializers.DictField()
    recorded_at = serializers.DateTimeField()


class FeedQuerySerializer(serializers.Serializer):
    after = serializers.CharField(
        required=False, max_length=40, help_text="The next_cursor of the previous page."
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=100)
    category = serializers.RegexField(
        r"^[A-Za-z][A-Za-z0-9_]*$", required=False, max_length=100, help_text="e.g. user"
    )
    type = serializers.CharField(required=False, max_length=200, help_text="e.g. UserCreated")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise ValidationError({name: ["Unknown parameter."] for name in unknown})
        reject_blank_parameters(self)
        return attrs


VIEW_EVENTS = "eventstore.view_event"


class CanViewEvents(BasePermission):
    """Staff holding the permission the admin's event pages ask for (``view_event``).

    The feed and stream pages show every event's data, so being staff is not enough:
    the API grants exactly what the admin grants.
    """

    message = "Reading events needs staff status and the eventstore.view_event permission."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_staff and user.has_perm(VIEW_EVENTS))


class EventFeedView(APIView):
    permission_classes = [CanViewEvents]

    @extend_schema(
        operation_id="events_feed",
        summary="The global event feed (staff with view_event)",
        description="Every event in commit-safe order. Each page, the last one too, carries "
        "`next_cursor`: poll with `after=<next_cursor>` to follow new events without "
        "missing or re-reading any.",
        parameters=[FeedQuerySerializer],
        responses={
            200: OpenApiResponse(
                inline_serializer(
                    "EventFeedPage",
                    {"events": EventSerializer(many=True), "next_cursor": serializers.CharField()},
                ),
                description="A page of events; follow with after=next_cursor.",
                examples=[
                    OpenApiExample(
                        "A page",
                        value={"events": [EXAMPLE_EVENT], "next_cursor": "7313-1042"},
                    )
                ],
            ),
            **problem_responses(400, 401, 403, 429, 503),
        },
    )
    def get(self, request: Request) -> Response:
        query = FeedQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        try:
            after = Cursor.parse(params["after"]) if "after" in params else None
        except InvalidCursor as exc:
            raise ValidationError({"after": [str(exc)]}) from None
        page = reads.read_all(
            after,
            limit=params["limit"],
            categories=[params["category"]] if "category" in params else None,
            event_types=[params["type"]] if "type" in params else None,
            lenient=True,
        )
        return Response(
            {
                "events": [serialize_event(e) for e in page.events],
                "next_cursor": str(page.next_cursor),
            }
        )


class StreamQuerySerializer(serializers.Serializer):
    from_version = serializers.IntegerField(required=False, min_value=0, default=0)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=100)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        reject_blank_parameters(self)
        return attrs


STREAM_ID = OpenApiParameter(
    "stream_id",
    {
        "type": "string",
        "maxLength": store.STREAM_ID_MAX_LENGTH,
        "pattern": store.STREAM_ID_PATTERN,
    },
    OpenApiParameter.PATH,
    description="`<category>-<id>`, e.g. `user-3f2c...`.",
)


class StreamView(APIView):
    permission_classes = [CanViewEvents]

    @extend_schema(
        operation_id="streams_retrieve",
        summary="One stream's events (staff with view_event)",
        parameters=[STREAM_ID, StreamQuerySerializer],
        responses={
            200: OpenApiResponse(
                inline_serializer(
                    "StaffStreamPage",
                    {
                        "stream_id": serializers.CharField(),
                        "category": serializers.CharField(),
                        "version": serializers.IntegerField(),
                        "events": EventSerializer(many=True),
                        "next_from_version": serializers.IntegerField(allow_null=True),
                    },
                ),
                description="The stream's events, oldest first; ETag is its version.",
                examples=[
                    OpenApiExample(
                        "A stream",
                        value={
                            "stream_id": EXAMPLE_EVENT["stream_id"],
                            "category": "user",
                            "version": 0,
                            "events": [EXAMPLE_EVENT],
                            "next_from_version": None,
                        },
                    )
                ],
            ),
            **problem_responses(400, 401, 403, 404, 429, 503),
        },
    )
    def get(self, request: Request, stream_id: str) -> Response:
        query = StreamQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        try:  # a malformed id (a NUL byte, say) names no stream and must not reach SQL
            store.validate_stream_id(stream_id)
        except InvalidAppend as exc:
            raise ValidationError({"stream_id": [str(exc)]}) from None
        version = reads.stream_version(stream_id)
        if version is None:
            raise NotFound(f"There is no stream {stream_id!r}.")
        events = reads.read_stream(
            stream_id,
            from_version=query.validated_data["from_version"],
            limit=query.validated_data["limit"],
            lenient=True,
        )
        last = events[-1].version if events else None
        return Response(
            {
                "stream_id": stream_id,
                "category": store.category_of(stream_id),
                "version": version,
                "events": [serialize_event(e) for e in events],
                "next_from_version": last + 1 if last is not None and last < version else None,
            },
            headers={"ETag": f'"{version}"'},
        )
