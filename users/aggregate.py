"""The User aggregate: the rules a user's history must obey.

Methods check the rules and record events; ``apply`` only changes state, so loading a
user from its stream and recording new events go through the same code.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from eventstore.aggregate import Aggregate, when
from users import rules
from users.errors import (
    AlreadyWelcomed,
    InvalidUserData,
    StaleVersion,
    UserIsDeleted,
    UserIsErased,
)
from users.events import UserCreated, UserDeleted, UserErased, UserUpdated, UserWelcomed

ACTIVE, DELETED, ERASED = "active", "deleted", "erased"

# Events the service records for its own bookkeeping, which change nothing a client
# writes: a conditional write (If-Match) made before one of them does not conflict.
BOOKKEEPING_EVENTS = (UserWelcomed,)


class User(Aggregate):
    category = "user"

    def __init__(self, aggregate_id: uuid.UUID) -> None:
        super().__init__(aggregate_id)
        self.email = ""
        self.first_name = ""
        self.last_name = ""
        self.status = ""
        self.welcomed_at: datetime | None = None
        self._applied = 0  # events applied so far; versions run from 0 without gaps
        self.last_change_version = -1  # version of the last event not in BOOKKEEPING_EVENTS

    @property
    def exists(self) -> bool:
        return self.version >= 0

    @property
    def is_active(self) -> bool:
        return self.status == ACTIVE

    # --- behaviour -------------------------------------------------------------------

    @classmethod
    def create(cls, user_id: uuid.UUID, email: str, first_name: str, last_name: str) -> User:
        fields = _validated({"email": email, "first_name": first_name, "last_name": last_name})
        user = cls(user_id)
        user.record(UserCreated(user_id=user_id, **fields))
        return user

    def update(
        self,
        *,
        email: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> None:
        """Record only what changes; an update that changes nothing records nothing."""
        self._ensure_not_deleted()
        given = {"email": email, "first_name": first_name, "last_name": last_name}
        fields = _validated({key: value for key, value in given.items() if value is not None})
        changed = {key: value for key, value in fields.items() if getattr(self, key) != value}
        if changed:
            self.record(UserUpdated(user_id=self.id, **changed))

    def delete(self) -> None:
        self._ensure_not_deleted()
        self.record(UserDeleted(user_id=self.id))

    def welcome(self, at: datetime) -> None:
        self._ensure_not_deleted()
        if self.welcomed_at is not None:
            raise AlreadyWelcomed(self.id)
        self.record(UserWelcomed(user_id=self.id, welcomed_at=at))

    def check_unchanged_since(self, version: int) -> None:
        """The rule of ``If-Match``: a write based on ``version`` may go ahead unless an
        event after it changed what clients write (bookkeeping events do not)."""
        if not self.last_change_version <= version <= self.version:
            raise StaleVersion(self.id, version, self.version)

    def erase(self) -> None:
        """Forget the user's personal data; erasing an erased user records nothing."""
        if self.status != ERASED:
            self.record(UserErased(user_id=self.id))

    def _ensure_not_deleted(self) -> None:
        if self.status == ERASED:
            raise UserIsErased(self.id)
        if self.status == DELETED:
            raise UserIsDeleted(self.id)

    # --- state changes ---------------------------------------------------------------

    def apply(self, event: object) -> None:
        super().apply(event)
        self._applied += 1
        if not isinstance(event, BOOKKEEPING_EVENTS):
            self.last_change_version = self._applied - 1

    @when(UserCreated)
    def _created(self, event: UserCreated) -> None:
        self.email, self.first_name, self.last_name = event.email, event.first_name, event.last_name
        self.status = ACTIVE

    @when(UserUpdated)
    def _updated(self, event: UserUpdated) -> None:
        for key in ("email", "first_name", "last_name"):
            value = getattr(event, key)
            if value is not None:
                setattr(self, key, value)

    @when(UserDeleted)
    def _deleted(self, event: UserDeleted) -> None:
        self.status = DELETED

    @when(UserWelcomed)
    def _welcomed(self, event: UserWelcomed) -> None:
        self.welcomed_at = event.welcomed_at

    @when(UserErased)
    def _erased(self, event: UserErased) -> None:
        self.email = self.first_name = self.last_name = ""
        self.status = ERASED


def _validated(values: dict[str, object]) -> dict[str, str]:
    normalizers = {
        "email": rules.normalize_email,
        "first_name": rules.normalize_name,
        "last_name": rules.normalize_name,
    }
    clean: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    for key, value in values.items():
        normalized, problems = normalizers[key](value)
        if problems:
            errors[key] = problems
        else:
            clean[key] = normalized  # type: ignore[assignment]
    if errors:
        raise InvalidUserData(errors)
    return clean
