"""Reads of the users context, over the read model only."""

from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet

from users.errors import UserNotFound
from users.models import UserRecord


def user_list(
    *, email: str | None = None, status: str | None = None, search: str | None = None
) -> QuerySet[UserRecord]:
    """Users, filtered; ``search`` matches first or last name, case-insensitively."""
    users = UserRecord.objects.all()
    if email:
        users = users.filter(email=email.strip().lower())
    if status:
        users = users.filter(status=status)
    if search:
        for word in search.split()[:5]:
            users = users.filter(Q(first_name__icontains=word) | Q(last_name__icontains=word))
    return users


def user_detail(user_id: uuid.UUID) -> UserRecord:
    try:
        return UserRecord.objects.get(id=user_id)
    except UserRecord.DoesNotExist:
        raise UserNotFound(user_id) from None
