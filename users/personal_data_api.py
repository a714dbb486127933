"""Erasure and export of a user's personal data over HTTP: staff with a dedicated permission.

``users.erase_user`` and ``users.export_user`` (on the user read model) are granted in the
admin like any permission; superusers have both. Being staff is not enough on its own.
"""

from __future__ import annotations

import logging
import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from eventstore.api import EventSerializer, command_context
from eventstore.api_docs import problem_responses
from users import handlers
from users.api_docs import ERASED_RESULT, EXPORT, USER_ID, ok
from users.commands import EraseUser
from users.export import SCHEMA, export_user
from users.serializers import UserWriteResultSerializer

logger = logging.getLogger(__name__)


class _StaffWithPermission(BasePermission):
    permission: str

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_staff and user.has_perm(self.permission))


class CanEraseUsers(_StaffWithPermission):
    permission = "users.erase_user"
    message = "Erasing a user needs staff status and the users.erase_user permission."


class CanExportUsers(_StaffWithPermission):
    permission = "users.export_user"
    message = "Exporting a user needs staff status and the users.export_user permission."


def _user_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValidationError({"id": [f"{raw!r} is not a valid UUID."]}) from None


class UserExportSerializer(serializers.Serializer):
    """The export document; users/export.py describes every section."""

    schema = serializers.ChoiceField(choices=[SCHEMA])
    exported_at = serializers.DateTimeField()
    user_id = serializers.UUIDField()
    erased = serializers.BooleanField(help_text="Personal fields read as erased throughout.")
    profile = serializers.DictField(help_text="The current state, from the user's events.")
    read_model = serializers.DictField(allow_null=True, help_text="The row the API reads.")
    events = EventSerializer(many=True, help_text="The whole stream, personal fields opened.")
    sagas = serializers.ListField(child=serializers.DictField())
    emails_sent = serializers.ListField(
        child=serializers.DictField(), help_text="sent_at, template, saga_type of each email."
    )
    api_tokens = serializers.ListField(
        child=serializers.DictField(),
        help_text="Tokens (prefix only) of API accounts with the user's email address.",
    )


class UserEraseView(APIView):
    permission_classes = [CanEraseUsers]

    @extend_schema(
        operation_id="users_erase",
        summary="Erase a user's personal data (staff)",
        description="Destroys the user's key, so their email and names in every event read "
        "as erased; drops the email reservation, stored responses and saga copies; records "
        "`UserErased`. The read model row becomes status `erased` with blank fields once the "
        "projection has it (pass `position` as `wait_for`). Erasing again changes nothing "
        "(`position` null); every other command on an erased user is 409. Irreversible.",
        request=None,
        parameters=[USER_ID],
        responses={
            200: ok(UserWriteResultSerializer, "Erased.", ERASED_RESULT),
            **problem_responses(400, 401, 403, 404, 409, 429, 503),
        },
    )
    def post(self, request: Request, user_id: str) -> Response:
        uid = _user_id(user_id)
        with command_context(request):
            result = handlers.handle(EraseUser(user_id=uid))
        logger.info("user %s erased by %s", uid, request.user.pk)
        user = result.user
        body = UserWriteResultSerializer().to_representation(
            {
                "id": user.id,
                "email": user.email,
                "first_name": user.first_name,
                "last_name": user.last_name,
                "status": user.status,
                "welcomed_at": user.welcomed_at,
                "version": user.version,
                "position": result.position,
            }
        )
        return Response(body, headers={"ETag": f'"{user.version}"'})


class UserExportView(APIView):
    permission_classes = [CanExportUsers]

    @extend_schema(
        operation_id="users_export",
        summary="Export everything stored about a user (staff)",
        description="One JSON document: the profile, every event of the user's stream "
        "(decrypted) with its metadata, saga state, emails sent, API tokens by prefix.",
        parameters=[USER_ID],
        responses={
            200: ok(UserExportSerializer, "Everything stored about the user.", EXPORT),
            **problem_responses(400, 401, 403, 404, 429, 503),
        },
    )
    def get(self, request: Request, user_id: str) -> Response:
        uid = _user_id(user_id)
        document = export_user(uid)
        logger.info("user %s exported by %s", uid, request.user.pk)
        return Response(document, headers={"Cache-Control": "no-store"})
