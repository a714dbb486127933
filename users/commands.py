"""Commands of the users context: orders, named in the imperative.

``expected_version`` pins the stream version a client saw (HTTP ``If-Match``); without
it a handler retries a lost race a few times before it reports a conflict.
"""

from dataclasses import dataclass, field
from uuid import UUID, uuid4


@dataclass(frozen=True, kw_only=True)
class CreateUser:
    email: str
    first_name: str
    last_name: str
    user_id: UUID = field(default_factory=uuid4)


@dataclass(frozen=True, kw_only=True)
class UpdateUser:
    user_id: UUID
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    expected_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class DeleteUser:
    user_id: UUID
    expected_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class WelcomeUser:
    user_id: UUID


@dataclass(frozen=True, kw_only=True)
class EraseUser:
    """Forget the user's personal data for good (GDPR article 17)."""

    user_id: UUID


Command = CreateUser | UpdateUser | DeleteUser | WelcomeUser | EraseUser
