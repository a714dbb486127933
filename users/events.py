"""Events of the users context: what happened to a user, in the past tense.

The names are stored with every event and never change. Email and names are personal
data of the user (the subject, ``user_id``): stored encrypted with that user's key, they
read as erased once ``UserErased`` has destroyed it.
"""

from datetime import datetime
from uuid import UUID

from eventstore.types import domain_event

PERSONAL = ("email", "first_name", "last_name")


@domain_event("UserCreated", personal=PERSONAL, subject="user_id")
class UserCreated:
    user_id: UUID
    email: str
    first_name: str
    last_name: str


@domain_event("UserUpdated", personal=PERSONAL, subject="user_id")
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


@domain_event("UserErased")
class UserErased:
    """The user's personal data was forgotten (their key destroyed); it holds none."""

    user_id: UUID
