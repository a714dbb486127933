"""The users HTTP API: thin views over handlers (writes) and selectors (reads)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import PreconditionFailed
from config.renderers import json_as_drf
from eventstore import progress, reads, subscribers
from eventstore.api import command_context, parse_if_match, serialize_event
from eventstore.api_docs import problem_responses
from users import handlers, selectors
from users.aggregate import User
from users.api_docs import (
    CAUGHT_UP,
    CREATE_EXAMPLE,
    ETAG,
    IDEMPOTENCY_KEY,
    IF_MATCH,
    LOCATION,
    PATCH_EXAMPLE,
    POSITION,
    REPLACE_EXAMPLE,
    UPDATED,
    USER,
    USER_EVENTS_PAGE,
    USER_ID,
    USER_PAGE,
    WRITE_RESULT,
    ok,
)
from users.commands import CreateUser, DeleteUser, UpdateUser
from users.errors import UserNotFound
from users.handlers import CommandResult
from users.idempotency import idempotent
from users.projections import UserListProjection
from users.serializers import (
    StreamPageQuerySerializer,
    UserCreateSerializer,
    UserEventsPageSerializer,
    UserListQuerySerializer,
    UserPageSerializer,
    UserPatchSerializer,
    UserReplaceSerializer,
    UserSerializer,
    UserWriteResultSerializer,
    WaitForQuerySerializer,
)


def _validated(serializer_class: type, data: Any, **kwargs: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _user_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValidationError({"id": [f"{raw!r} is not a valid UUID."]}) from None


# One instance serves every write: to_representation keeps no state (DRF reuses a list's
# child the same way), and a new serializer per response would copy its fields again.
_WRITE_RESULT = UserWriteResultSerializer()
# The aggregate's attributes the response shows: the serializer's fields but the position.
_STATE_FIELDS = tuple(name for name in _WRITE_RESULT.fields if name != "position")


def _write_response(result: CommandResult, status_code: int = 200, **headers: str) -> Response:
    user = result.user
    state = {name: getattr(user, name) for name in _STATE_FIELDS}
    body = _WRITE_RESULT.to_representation({**state, "position": result.position})
    return Response(body, status=status_code, headers={"ETag": f'"{user.version}"', **headers})


# Requests of this process that may wait for the read model at once; any more are answered
# at once, so that waiting clients cannot take every thread of a web process.
_waiters = threading.BoundedSemaphore(settings.READ_YOUR_WRITES_MAX_WAITERS)


def _wait_for_read_model(request: Request, position: int | None) -> dict[str, str]:
    """Read-your-writes: wait (bounded) for the users projection to reach ``position``."""
    if position is None:
        return {}
    projection = subscribers.get(UserListProjection.name)
    try:
        if _waiters.acquire(blocking=False):
            try:
                caught_up = progress.wait_until_processed(
                    projection, position, timeout=settings.READ_YOUR_WRITES_TIMEOUT_SECONDS
                )
            finally:
                _waiters.release()
        else:  # every waiting place is taken: say where the read model is now
            caught_up = progress.state_of(projection, position) == progress.PROCESSED
    except LookupError:
        raise ValidationError(
            {"wait_for": [f"No event has position {position}: pass the position a write returned."]}
        ) from None
    return {"Read-Model-Caught-Up": "true" if caught_up else "false"}


def _expected_version(request: Request) -> int | None:
    """The version a conditional write is based on; None for no If-Match, or ``*``.

    ``*`` matches any current version: the write only needs the user to exist, which
    every write checks anyway (a missing user is 404, RFC 9110 section 13.2.1). Of several
    ETags the newest decides: a change after it conflicts with the older ones too.
    """
    condition = parse_if_match(request)
    if condition is None or condition.any:
        return None
    if not condition.versions:
        raise PreconditionFailed(
            'If-Match compares ETags strongly (RFC 9110), so a weak one (W/"3") never '
            'matches: send the ETag as a read or write returned it ("3").'
        )
    return max(condition.versions)


class UserListView(APIView):
    @extend_schema(
        operation_id="users_list",
        summary="List users",
        description="Users from the read model, newest first unless `ordering` says otherwise. "
        "Pass `wait_for` (a position from a write) to read your own writes.",
        parameters=[UserListQuerySerializer, CAUGHT_UP],
        responses={
            200: ok(UserPageSerializer, "A page of users.", USER_PAGE),
            **problem_responses(400, 401, 429, 503),
        },
    )
    def get(self, request: Request) -> Response:
        query = _validated(UserListQuerySerializer, request.query_params)
        headers = _wait_for_read_model(request, query.get("wait_for"))
        users = selectors.user_list(
            email=query.get("email"), status=query.get("status"), search=query.get("search")
        ).order_by(query["ordering"], "id")
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(users, request, view=self)
        response = paginator.get_paginated_response(UserSerializer(page, many=True).data)
        for name, value in headers.items():
            response[name] = value
        return response

    @extend_schema(
        operation_id="users_create",
        summary="Create a user",
        description="Records `UserCreated` on a new stream `user-<id>`. The email must be "
        "unused (case-insensitive): else 409. A client-chosen `id` that exists is 409.",
        request=UserCreateSerializer,
        parameters=[IDEMPOTENCY_KEY, ETAG, LOCATION],
        examples=[CREATE_EXAMPLE],
        responses={
            201: ok(UserWriteResultSerializer, "Created.", WRITE_RESULT),
            **problem_responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
        },
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = _validated(UserCreateSerializer, request.data)
        command = CreateUser(
            user_id=data.get("id") or uuid.uuid4(),
            email=data["email"],
            first_name=data["first_name"],
            last_name=data["last_name"],
        )
        with command_context(request):
            result = handlers.handle(command)
        return _write_response(result, 201, Location=f"/v1/users/{result.user.id}")


class UserDetailView(APIView):
    @extend_schema(
        operation_id="users_retrieve",
        summary="Get a user",
        parameters=[USER_ID, WaitForQuerySerializer, ETAG, CAUGHT_UP],
        responses={
            200: ok(UserSerializer, "The user, as the read model has it.", USER),
            **problem_responses(400, 401, 404, 429, 503),
        },
    )
    def get(self, request: Request, user_id: str) -> HttpResponse:
        # Most reads carry no query string: then there is nothing to validate, nor a
        # QueryDict to build.
        params = request.query_params if request.META.get("QUERY_STRING") else None
        query = _validated(WaitForQuerySerializer, params) if params else {}
        headers = _wait_for_read_model(request, query.get("wait_for"))
        user = selectors.user_detail(_user_id(user_id))
        headers["ETag"] = f'"{user["version"]}"'
        # The row is the response already: JSON writes its UUID and UTC datetimes exactly
        # as UserSerializer (the documented shape) would, at a fraction of the cost
        # (tests/e2e/test_request_path.py compares the two). A media type with parameters
        # (``application/json; indent=2``) is DRF's renderer's to honour.
        if request.accepted_media_type == "application/json":
            return HttpResponse(json_as_drf(user), "application/json", headers=headers)
        return Response(user, headers=headers)

    @extend_schema(
        operation_id="users_replace",
        summary="Replace a user's fields",
        description="All fields required; records `UserUpdated` with the fields that change "
        "(nothing if none does).",
        request=UserReplaceSerializer,
        parameters=[USER_ID, IF_MATCH, ETAG],
        examples=[REPLACE_EXAMPLE],
        responses={
            200: ok(UserWriteResultSerializer, "Replaced.", UPDATED),
            **problem_responses(400, 401, 403, 404, 409, 412, 413, 415, 429, 503),
        },
    )
    def put(self, request: Request, user_id: str) -> Response:
        return self._update(request, user_id, UserReplaceSerializer)

    @extend_schema(
        operation_id="users_partial_update",
        summary="Change some of a user's fields",
        request=UserPatchSerializer,
        parameters=[USER_ID, IF_MATCH, ETAG],
        examples=[PATCH_EXAMPLE],
        responses={
            200: ok(UserWriteResultSerializer, "Changed.", UPDATED),
            **problem_responses(400, 401, 403, 404, 409, 412, 413, 415, 429, 503),
        },
    )
    def patch(self, request: Request, user_id: str) -> Response:
        return self._update(request, user_id, UserPatchSerializer)

    def _update(self, request: Request, user_id: str, serializer_class: type) -> Response:
        uid = _user_id(user_id)
        expected = _expected_version(request)
        data = _validated(serializer_class, request.data)
        command = UpdateUser(user_id=uid, expected_version=expected, **data)
        with command_context(request):
            result = handlers.handle(command)
        return _write_response(result)

    @extend_schema(
        operation_id="users_destroy",
        summary="Delete a user",
        description="Records `UserDeleted`; the email becomes free again. A deleted user "
        "stays in the list with status `deleted`; deleting it again is 409.",
        parameters=[USER_ID, IF_MATCH, ETAG, POSITION],
        responses={
            204: OpenApiResponse(description="Deleted; ETag and Position headers tell where."),
            **problem_responses(400, 401, 403, 404, 409, 412, 429, 503),
        },
    )
    def delete(self, request: Request, user_id: str) -> Response:
        uid = _user_id(user_id)
        command = DeleteUser(user_id=uid, expected_version=_expected_version(request))
        with command_context(request):
            result = handlers.handle(command)
        return Response(
            status=status.HTTP_204_NO_CONTENT,
            headers={"ETag": f'"{result.version}"', "Position": str(result.position)},
        )


class UserEventsView(APIView):
    @extend_schema(
        operation_id="users_events",
        summary="A user's events",
        description="The user's stream, oldest first, with metadata (who, correlation, "
        "causation). Page with `from_version`.",
        parameters=[USER_ID, StreamPageQuerySerializer, ETAG],
        responses={
            200: ok(UserEventsPageSerializer, "A page of the user's events.", USER_EVENTS_PAGE),
            **problem_responses(400, 401, 404, 429, 503),
        },
    )
    def get(self, request: Request, user_id: str) -> Response:
        uid = _user_id(user_id)
        query = _validated(StreamPageQuerySerializer, request.query_params)
        stream_id = User.stream_id_for(uid)
        version = reads.stream_version(stream_id)
        if version is None:
            raise UserNotFound(uid)
        events = reads.read_stream(
            stream_id, from_version=query["from_version"], limit=query["limit"], lenient=True
        )
        next_version = events[-1].version + 1 if events and events[-1].version < version else None
        return Response(
            {
                "stream_id": stream_id,
                "version": version,
                "events": [serialize_event(e) for e in events],
                "next_from_version": next_version,
            },
            headers={"ETag": f'"{version}"'},
        )
