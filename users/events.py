"""Events of the users context: what happened to a user, in the past tense.

The names are stored with every event and never change.
"""

from datetime import datetime
from uuid import UUID

from eventstore.types import domain_event


@domain_event("UserCreated")
class UserCreated:
    user_id: UUID
    email: str
    first_name: str
    last_name: str


@domain_event("UserUpdated")
class UserUpdated:
    """Only the fields that changed are set."""

    user_id: UUID
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None


@domain_event("UserDeleted")
class UserDeleted:
    user_id: UUID


@domain_event("UserWelcomed")
class UserWelcomed:
    user_id: UUID
    welcomed_at: datetime
