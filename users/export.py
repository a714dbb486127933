"""Everything stored about one user, as one JSON document (GDPR articles 15 and 20).

The document (``schema``: ``user-export/1``)::

    {
      "schema": "user-export/1",
      "exported_at": "2026-01-01T12:00:00+00:00",
      "user_id": "<uuid>",
      "erased": false,
      "profile": {"id", "email", "first_name", "last_name", "status", "welcomed_at",
                  "version"},                  # the current state, from the user's stream
      "read_model": {...} | null,             # the row GET /v1/users/{id} serves
      "events": [{"position", "stream_id", "version", "event_id", "event_type", "data",
                  "metadata", "recorded_at"}],  # the whole stream, personal fields opened
      "sagas": [{"saga_type", "status", "step", "attempts", "last_error", "started_at",
                 "updated_at", "finished_at", "data"}],
      "emails_sent": [{"sent_at", "template", "saga_type"}],
      "api_tokens": [{"prefix", "name", "created_at", "last_used_at"}]
    }

``api_tokens`` are those of the API accounts (Django users) whose email is the user's
current address: the only link between a person in the user list and an account. Other
apps add sections through :data:`eventstore.personal.subject_exported` (``sagas`` and
``emails_sent`` come from the sagas app). After an erasure the personal fields read as
erased everywhere in it.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone

from eventstore import personal, reads
from eventstore.api import serialize_event
from users.aggregate import ERASED, User
from users.errors import UserNotFound
from users.handlers import repository
from users.models import ApiToken, UserRecord
from users.selectors import USER_FIELDS

SCHEMA = "user-export/1"


def export_user(user_id: uuid.UUID) -> dict[str, Any]:
    """The export document of ``user_id``; raises UserNotFound for an unknown user."""
    stream_id = User.stream_id_for(user_id)
    with personal.key_scope():  # one key fetch for the profile and the events
        if reads.stream_version(stream_id) is None:
            raise UserNotFound(user_id)
        user = repository.load(user_id)
        events = reads.read_stream(stream_id, lenient=True)
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "exported_at": timezone.now().isoformat(),
        "user_id": str(user_id),
        "erased": user.status == ERASED,
        "profile": {
            "id": str(user.id),
            "email": user.email,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "status": user.status,
            "welcomed_at": user.welcomed_at.isoformat() if user.welcomed_at else None,
            "version": user.version,
        },
        "read_model": _read_model_row(user_id),
        "events": [serialize_event(event) for event in events],
        "sagas": [],
        "emails_sent": [],
        "api_tokens": _api_tokens(user.email),
    }
    for _, sections in personal.subject_exported.send(sender=User, subject=str(user_id)):
        for name, items in (sections or {}).items():
            document.setdefault(name, []).extend(items)
    return document


def _read_model_row(user_id: uuid.UUID) -> dict[str, Any] | None:
    row = UserRecord.objects.filter(id=user_id).values(*USER_FIELDS).first()
    if row is None:
        return None
    return {key: _plain(value) for key, value in row.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    return value.isoformat() if hasattr(value, "isoformat") else value


def _api_tokens(email: str) -> list[dict[str, Any]]:
    if not email:
        return []
    accounts = get_user_model().objects.filter(email__iexact=email)
    tokens = ApiToken.objects.filter(user__in=accounts).order_by("created_at")
    return [
        {
            "prefix": token.prefix,
            "name": token.name,
            "created_at": token.created_at.isoformat(),
            "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        }
        for token in tokens
    ]
