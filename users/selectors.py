"""Reads of the users context, over the read model only."""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any

from django.db import connections
from django.db.models import Q, QuerySet

from users import rules
from users.errors import UserNotFound
from users.models import UserRecord

# The read model's columns as the API shows a user, in order: all but the bookkeeping.
USER_FIELDS = tuple(
    field.attname for field in UserRecord._meta.concrete_fields if field.name != "last_position"
)


def user_list(
    *, email: str | None = None, status: str | None = None, search: str | None = None
) -> QuerySet[UserRecord]:
    """Users, filtered; ``search`` matches first or last name, case-insensitively."""
    users = UserRecord.objects.all()
    if email:
        users = users.filter(email=rules.canonical_email(email) or email.strip().lower())
    if status:
        users = users.filter(status=status)
    if search:
        for word in search.split()[:5]:
            users = users.filter(Q(first_name__icontains=word) | Q(last_name__icontains=word))
    return users


def user_detail(user_id: uuid.UUID) -> dict[str, Any]:
    """One user as the API shows it, as a plain row: the hottest read builds no model.

    Its statement is prepared once per connection (config/postgres), which spares
    PostgreSQL parsing and planning it on every call.
    """
    with connections[UserRecord.objects.db].prepared_cursor() as cursor:
        cursor.execute(_user_detail_sql(), [user_id])
        row = cursor.fetchone()
    if row is None:
        raise UserNotFound(user_id)
    return dict(zip(USER_FIELDS, row, strict=True))


@cache
def _user_detail_sql() -> str:
    """The ORM's statement for ``user_detail``, compiled once per process.

    Compiling it takes longer than running it, and it never changes; these columns need
    no converters on PostgreSQL (native uuid, timestamptz).
    """
    placeholder = uuid.UUID(int=0)
    query = UserRecord.objects.order_by().values(*USER_FIELDS).filter(id=placeholder).query
    sql, params = query.sql_with_params()
    if params != (placeholder,):
        raise RuntimeError(f"unexpected parameters for the user detail query: {params!r}")
    return sql
