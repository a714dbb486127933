"""Request and response shapes of the users API (snake_case JSON)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from eventstore.api import EventSerializer, reject_blank_parameters
from users.models import UserRecord
from users.selectors import USER_FIELDS


class StrictCharField(serializers.CharField):
    """A string and nothing else: 42 or true is an error, not "42" or "True"."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class NoUnknownFieldsMixin:
    """Reject fields the endpoint does not know, instead of silently ignoring them."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))  # type: ignore[attr-defined]
            if unknown:
                raise serializers.ValidationError(
                    {
                        name: ["Unknown field; allowed: " + ", ".join(self.fields)]
                        for name in unknown
                    }  # type: ignore[attr-defined]
                )
        return super().to_internal_value(data)  # type: ignore[misc]


def _name_field(required: bool) -> StrictCharField:
    # Length and content rules live in the aggregate; this only bounds the input.
    return StrictCharField(
        required=required, allow_blank=True, trim_whitespace=False, max_length=1000
    )


class UserCreateSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    id = serializers.UUIDField(
        required=False, help_text="Optional id chosen by the client (a UUID); else generated."
    )
    email = StrictCharField(max_length=1000, trim_whitespace=False)
    first_name = _name_field(True)
    last_name = _name_field(True)


class UserReplaceSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    email = StrictCharField(max_length=1000, trim_whitespace=False)
    first_name = _name_field(True)
    last_name = _name_field(True)


class UserPatchSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    email = StrictCharField(max_length=1000, trim_whitespace=False, required=False)
    first_name = _name_field(False)
    last_name = _name_field(False)


class UserWriteResultSerializer(serializers.Serializer):
    """The aggregate's state right after the command, and where its last event landed."""

    id = serializers.UUIDField()
    email = serializers.EmailField()
    first_name = serializers.CharField()
    last_name = serializers.CharField()
    status = serializers.ChoiceField(choices=UserRecord.Status.choices)
    welcomed_at = serializers.DateTimeField(allow_null=True)
    version = serializers.IntegerField(help_text="Stream version (also the ETag).")
    position = serializers.IntegerField(
        allow_null=True,
        help_text="Global position of the last event written; pass it as wait_for to read "
        "your own write. Null when the command changed nothing.",
    )


class UserSerializer(serializers.ModelSerializer):
    """A user as the read model has it."""

    class Meta:
        model = UserRecord
        fields = list(USER_FIELDS)
        read_only_fields = fields


class UserPageSerializer(serializers.Serializer):
    """A page of the user list (limit/offset pagination)."""

    count = serializers.IntegerField(help_text="Users matching the filters, on all pages.")
    next = serializers.URLField(allow_null=True, help_text="URL of the next page; null at the end.")
    previous = serializers.URLField(allow_null=True, help_text="URL of the previous page.")
    results = UserSerializer(many=True)


class QueryParametersMixin(NoUnknownFieldsMixin):
    """Query parameters: unknown names and blank values (``?status=``) are errors."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        reject_blank_parameters(self)  # type: ignore[arg-type]
        return attrs


class UserListQuerySerializer(QueryParametersMixin, serializers.Serializer):
    email = serializers.CharField(
        required=False, max_length=320, help_text="Exact email (any case)."
    )
    status = serializers.ChoiceField(choices=UserRecord.Status.choices, required=False)
    search = serializers.CharField(
        required=False, max_length=200, help_text="Words matched against first and last names."
    )
    ordering = serializers.ChoiceField(
        choices=["created_at", "-created_at", "email", "-email", "last_name", "-last_name"],
        required=False,
        default="-created_at",
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500, default=50)
    offset = serializers.IntegerField(required=False, min_value=0, max_value=10_000_000, default=0)
    wait_for = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="A position returned by a write: wait (bounded) until the list includes it.",
    )


class WaitForQuerySerializer(QueryParametersMixin, serializers.Serializer):
    wait_for = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="A position returned by a write: wait (bounded) until the read model has it.",
    )


class StreamPageQuerySerializer(QueryParametersMixin, serializers.Serializer):
    from_version = serializers.IntegerField(required=False, min_value=0, default=0)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=100)


class UserEventsPageSerializer(serializers.Serializer):
    stream_id = serializers.CharField()
    version = serializers.IntegerField(help_text="The stream's current version.")
    events = EventSerializer(many=True)
    next_from_version = serializers.IntegerField(
        allow_null=True, help_text="Pass as from_version for the next page; null at the end."
    )
